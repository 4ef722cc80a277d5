"""A ``StrategyConfig`` → ``lightning.Trainer`` keyword arguments (strategy, accelerator, devices,
precision, plugins).  The Lightning side of the launch layer: it imports Lightning, so the config
side (:mod:`physfm.train.strategies`) stays light to import.

    cfg = StrategyConfig(name="deepspeed", zero_stage=3)
    trainer = lightning.Trainer(**build_trainer_kwargs(cfg), max_steps=100)
"""

from __future__ import annotations

import os
from typing import Any

from data_pipelines.config import ConfigError
from physfm.core.checkpoint import atomic_checkpoint_io
from physfm.train.deepspeed_cpu import CPUDeepSpeedStrategy
from physfm.train.strategies import StrategyConfig, build_deepspeed_config, resolve_accelerator


def _launcher_layout() -> tuple[int | None, int | None]:
    """(processes per node, nodes) from an external launcher, in Lightning's detection order."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return per_node, max(1, int(os.environ["WORLD_SIZE"]) // per_node)
    if SLURMEnvironment.detect():
        tasks = os.environ.get("SLURM_NTASKS_PER_NODE", "")
        nodes = os.environ.get("SLURM_NNODES", "")
        return (int(tasks) if tasks.isdigit() else None), (int(nodes) if nodes.isdigit() else None)
    return None, None


def build_trainer_kwargs(cfg: StrategyConfig) -> dict[str, Any]:
    """``Trainer`` kwargs (strategy, accelerator, devices, num_nodes, precision, plugins) for
    ``cfg``. Checkpoints from every strategy are written atomically (see
    :mod:`physfm.core.checkpoint`)."""
    cfg.validate()
    accelerator = resolve_accelerator(cfg)
    precision = (
        cfg.precision
        if cfg.precision != "auto"
        else ("bf16-mixed" if accelerator == "gpu" else "32-true")
    )
    backend = cfg.process_group_backend
    if backend == "auto":
        backend = "nccl" if accelerator == "gpu" else "gloo"
    elif backend == "nccl" and accelerator == "cpu":
        raise ConfigError(
            "strategy.process_group_backend: nccl needs GPUs but none is visible (use gloo)"
        )
    per_node, nodes = _launcher_layout()
    devices: int | str = cfg.devices if cfg.devices != "auto" else (per_node or "auto")
    num_nodes = cfg.num_nodes if cfg.num_nodes != "auto" else (nodes or 1)

    strategy: Any
    plugins: list[Any] = []
    if cfg.name in ("auto", "single"):
        strategy = "auto"
        # file checkpoints written atomically, loaded without pickle
        plugins.append(atomic_checkpoint_io())
        if cfg.name == "single":
            devices, num_nodes = 1, 1  # one device → Lightning's SingleDeviceStrategy
    elif cfg.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend=backend, checkpoint_io=atomic_checkpoint_io())
    else:
        if accelerator == "cpu":
            # DeepSpeed picks its accelerator once, at first use; make CPU explicit before it does.
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        strategy = CPUDeepSpeedStrategy(
            config=build_deepspeed_config(cfg), process_group_backend=backend
        )
    return {
        "strategy": strategy,
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "precision": precision,
        "plugins": plugins,
    }
