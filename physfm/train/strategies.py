"""Launch layer: which Lightning strategy, accelerator, device count and precision a run uses — by config.

The model never sees any of this (torchtitan habit: parallelism is applied from outside).  One
``StrategyConfig`` (a section of the pretrain/finetune configs) becomes ``Trainer`` keyword arguments::

    cfg = StrategyConfig(name="deepspeed", zero_stage=3)
    trainer = lightning.Trainer(**build_trainer_kwargs(cfg), max_steps=100)

The only CPU/GPU difference is what the config resolves to (accelerator, precision, process-group
backend).  The DeepSpeed strategy is :class:`CPUDeepSpeedStrategy` on both: on CUDA it *is* Lightning's
``DeepSpeedStrategy``; on a CPU it lifts three CUDA-only assumptions so the same ZeRO JSONs run on gloo.
Launchers are Lightning's to detect (torchrun → TorchElasticEnvironment, srun → SLURMEnvironment).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from data_pipelines.atomic import publish_dir, remove_path
from data_pipelines.config import ConfigError
from physfm.core import checkpoint as ckpt_io
from physfm.core.checkpoint import atomic_checkpoint_io

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEEPSPEED_CONFIG_DIR = REPO_ROOT / "configs" / "deepspeed"
# A DeepSpeed JSON may say "auto" for values Lightning fills from the Trainer (gradient_accumulation_steps
# from accumulate_grad_batches, train_micro_batch_size_per_gpu from the loader, gradient_clipping from
# gradient_clip_val, bf16 from precision) or that DeepSpeed defaults; "auto" entries are dropped.


@dataclass
class StrategyConfig:
    """How a run is parallelised and at what precision (the ``strategy:`` section of a config)."""

    name: Literal["auto", "single", "ddp", "deepspeed"] = "auto"
    deepspeed_config: str | None = None  # JSON path; None → configs/deepspeed/zero{stage}[_offload].json
    zero_stage: int | None = None  # overrides the JSON's zero_optimization.stage
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer state to CPU (DeepSpeedCPUAdam)
    offload_params: bool = False  # ZeRO-3 parameter offload to CPU
    precision: Literal["auto", "32-true", "bf16-mixed"] = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int | str = "auto"  # per node; auto: the launcher's processes per node, else Lightning's
    num_nodes: int | str = "auto"  # auto: the launcher's node count, else 1
    activation_checkpointing: bool = False  # applied to the model's blocks by the training layer
    process_group_backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on GPU, gloo on CPU

    def validate(self, prefix: str = "strategy") -> None:
        """Reject impossible combinations before any work, naming the offending key."""
        key = (prefix + ".") if prefix else ""
        for field in ("devices", "num_nodes"):
            value = getattr(self, field)
            if isinstance(value, str) and value != "auto" or isinstance(value, int) and value < 1:
                raise ConfigError(f"{key}{field}: expected a positive integer or 'auto', got {value!r}")
        if self.name == "single" and (self.devices not in (1, "auto") or self.num_nodes not in (1, "auto")):
            raise ConfigError(
                f"{key}devices: name=single runs one process; got devices={self.devices!r}, "
                f"num_nodes={self.num_nodes!r} (use name=ddp or deepspeed)"
            )
        if self.name != "deepspeed":
            for field in ("zero_stage", "deepspeed_config", "offload_optimizer", "offload_params"):
                if getattr(self, field) not in (None, False):
                    raise ConfigError(
                        f"{key}{field}: needs {key}name=deepspeed (ZeRO sharding and offload "
                        f"are DeepSpeed features; name={self.name!r} does not support them)"
                    )
        if self.accelerator == "cpu" and self.process_group_backend == "nccl":
            raise ConfigError(f"{key}process_group_backend: nccl needs GPUs but accelerator=cpu (use gloo)")
        if self.name == "deepspeed":
            stage = self.resolved_zero_stage(prefix)
            if self.offload_params and stage != 3:
                raise ConfigError(f"{key}offload_params: parameter offload needs ZeRO stage 3, got stage {stage}")
            if self.offload_optimizer and stage == 0:
                raise ConfigError(f"{key}offload_optimizer: optimizer offload needs ZeRO stage 1, 2 or 3")

    def deepspeed_config_path(self, prefix: str = "strategy") -> Path:
        """The JSON this config uses: the one named, else the stock one for its stage and offload."""
        if self.deepspeed_config is not None:
            return resolve_config_path(self.deepspeed_config, f"{prefix}.deepspeed_config")
        stage = 2 if self.zero_stage is None else self.zero_stage
        offload = (self.offload_optimizer or self.offload_params) and stage in (2, 3)
        name = f"zero{max(stage, 1)}{'_offload' if offload else ''}.json"
        return resolve_config_path(DEEPSPEED_CONFIG_DIR / name, f"{prefix}.zero_stage")

    def resolved_zero_stage(self, prefix: str = "strategy") -> int:
        if self.zero_stage is not None:
            if self.zero_stage not in (0, 1, 2, 3):
                raise ConfigError(f"{prefix}.zero_stage: expected 0, 1, 2 or 3, got {self.zero_stage}")
            return self.zero_stage
        path = self.deepspeed_config_path(prefix)
        stage = read_deepspeed_json(path, f"{prefix}.deepspeed_config").get("zero_optimization", {}).get("stage", 0)
        if stage not in (0, 1, 2, 3):
            raise ConfigError(f"{path}: zero_optimization.stage must be 0..3, got {stage!r}")
        return int(stage)


def resolve_config_path(path: str | Path, key: str) -> Path:
    """A config path as given (relative to the working directory), else relative to the repository."""
    path = Path(path)
    for candidate in (path, REPO_ROOT / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{key}: file not found: {path}")


def read_deepspeed_json(path: str | Path, key: str = "strategy.deepspeed_config") -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{key}: cannot read DeepSpeed JSON {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {path} must hold a JSON object")
    return data


def _drop_auto(tree: dict[str, Any]) -> dict[str, Any]:
    """Remove ``"auto"`` values and ``_comment``-style keys so Lightning/DeepSpeed defaults apply."""
    out = {}
    for k, v in tree.items():
        if k.startswith("_") or v == "auto":
            continue
        out[k] = _drop_auto(v) if isinstance(v, dict) else v
    return out


def build_deepspeed_config(cfg: StrategyConfig, prefix: str = "strategy") -> dict[str, Any]:
    """The DeepSpeed config dict a run uses: JSON, minus "auto" values, plus the config's overrides."""
    ds = _drop_auto(read_deepspeed_json(cfg.deepspeed_config_path(prefix), f"{prefix}.deepspeed_config"))
    zero = ds.setdefault("zero_optimization", {})
    zero["stage"] = cfg.resolved_zero_stage(prefix)
    if cfg.offload_optimizer:
        zero.setdefault("offload_optimizer", {"device": "cpu", "pin_memory": True})
    if cfg.offload_params:
        zero.setdefault("offload_param", {"device": "cpu", "pin_memory": True})
    if "gradient_accumulation_steps" in ds:  # Lightning refuses it: it comes from accumulate_grad_batches
        raise ConfigError(
            f'{prefix}.deepspeed_config: set gradient_accumulation_steps to "auto" in '
            f"{cfg.deepspeed_config_path(prefix)} and use trainer.accumulate_grad_batches"
        )
    ds.setdefault("zero_allow_untested_optimizer", True)  # our optimizer comes from configure_optimizers
    return ds


def uses_cpu_adam(cfg: StrategyConfig) -> bool:
    """Whether the optimizer must be DeepSpeedCPUAdam: optimizer state offloaded to the CPU (DeepSpeed
    refuses a client torch optimizer there)."""
    if cfg.name != "deepspeed":
        return False
    if cfg.offload_optimizer:
        return True
    zero = read_deepspeed_json(cfg.deepspeed_config_path()).get("zero_optimization", {})
    return str(zero.get("offload_optimizer", {}).get("device", "none")) in ("cpu", "nvme")


def build_optimizer(
    cfg: StrategyConfig,
    params: Any,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """AdamW for ``configure_optimizers``: torch's, or DeepSpeedCPUAdam (same maths) under offload.
    A client torch AdamW also avoids DeepSpeed's fused_adam build (~42 s on first use)."""
    if uses_cpu_adam(cfg):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adamw_mode=True)
    import torch

    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


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


def resolve_accelerator(cfg: StrategyConfig) -> str:
    import torch

    if cfg.accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("strategy.accelerator: gpu requested but no CUDA device is visible")
    return cfg.accelerator


def build_trainer_kwargs(cfg: StrategyConfig) -> dict[str, Any]:
    """``Trainer`` kwargs (strategy, accelerator, devices, num_nodes, precision, plugins) for ``cfg``.
    Checkpoints from every strategy are written atomically (see :mod:`physfm.core.checkpoint`)."""
    cfg.validate()
    accelerator = resolve_accelerator(cfg)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16-mixed" if accelerator == "gpu" else "32-true")
    backend = cfg.process_group_backend
    if backend == "auto":
        backend = "nccl" if accelerator == "gpu" else "gloo"
    elif backend == "nccl" and accelerator == "cpu":
        raise ConfigError("strategy.process_group_backend: nccl needs GPUs but none is visible (use gloo)")
    per_node, nodes = _launcher_layout()
    devices: int | str = cfg.devices if cfg.devices != "auto" else (per_node or "auto")
    num_nodes = cfg.num_nodes if cfg.num_nodes != "auto" else (nodes or 1)

    strategy: Any
    plugins: list[Any] = []
    if cfg.name in ("auto", "single"):
        strategy = "auto"
        plugins.append(atomic_checkpoint_io())  # file checkpoints written atomically, loaded without pickle
        if cfg.name == "single":
            devices, num_nodes = 1, 1  # one device → Lightning's SingleDeviceStrategy
    elif cfg.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend=backend, checkpoint_io=atomic_checkpoint_io())
    else:
        if accelerator == "cpu":
            # DeepSpeed picks its accelerator once, at first use; make CPU explicit before it does.
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        strategy_cls = cpu_deepspeed_strategy_class()
        strategy = strategy_cls(config=build_deepspeed_config(cfg), process_group_backend=backend)
    return {
        "strategy": strategy,
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "precision": precision,
        "plugins": plugins,
    }


def return_freed_memory_to_os() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``); False where libc has none.

    Each rank builds the whole model before DeepSpeed partitions it; the freed full-size tensors otherwise
    stay in the process's heap, resident but unused (bench/scale.py: 1.4 GiB per rank of the 1b on CPU)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return False
    return True


def apply_activation_checkpointing(module: torch.nn.Module, block_types: tuple[type, ...]) -> int:
    """Recompute activations of every submodule of ``block_types`` in backward (non-reentrant
    checkpointing, applied from outside the model).  State-dict keys are unchanged.  Returns the count."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as wrap_blocks,
    )

    count = sum(isinstance(m, block_types) for m in module.modules())
    wrap_blocks(module, check_fn=lambda m: isinstance(m, block_types))
    return count


def _make_cpu_deepspeed_strategy_class() -> type:
    """Defined lazily so importing this module does not import Lightning/DeepSpeed (CLI start-up)."""
    from lightning.pytorch.accelerators.cuda import CUDAAccelerator
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
    from lightning.pytorch.strategies.deepspeed import remove_module_hooks
    from lightning.pytorch.trainer.states import TrainerFn

    class _CPUDeepSpeedStrategy(DeepSpeedStrategy):
        """Lightning's ``DeepSpeedStrategy`` that also runs on a CPU accelerator (gloo).

        Overrides, each because the parent assumes CUDA:
        - ``setup_environment``: the parent refuses any non-CUDA accelerator outright.
        - ``setup_distributed``: the parent checks device indices equal local ranks; CPU devices have none.
        - ``_device_rank`` in ``deepspeed.initialize``: the parent passes ``root_device.index`` (None on
          CPU, which DeepSpeed cannot compare with 0); DeepSpeed needs ``local_rank`` to take the
          distributed world size.
        On CUDA all three defer to the parent, so GPU runs are stock Lightning.  Also, on any device:
        - ``save_checkpoint``: shards go to ``PATH.tmp``, then a ``COMPLETE`` marker, then a rename, so a
          crash mid-save never leaves a directory that looks whole;
        - ``load_checkpoint``: every shard is vetted with ``weights_only=True`` first (DeepSpeed unpickles
          freely); outside fit, ZeRO-3 shards are merged to full weights because DeepSpeed cannot load
          them into an optimizer-less engine (deepspeed#7272).
        """

        strategy_name = "deepspeed_cpu"

        def _on_cuda(self) -> bool:
            return isinstance(self.accelerator, CUDAAccelerator)

        @property
        def _device_rank(self) -> int:
            return self.root_device.index if self._on_cuda() else self.local_rank

        def setup_environment(self) -> None:
            if self._on_cuda():
                return super().setup_environment()
            from deepspeed.accelerator import get_accelerator

            if get_accelerator().device_name() != "cpu":
                raise RuntimeError(
                    f"accelerator=cpu but DeepSpeed chose {get_accelerator().device_name()!r}; "
                    "set DS_ACCELERATOR=cpu before DeepSpeed is first imported"
                )
            DDPStrategy.setup_environment(self)  # skips only the parent's CUDA check

        def setup_distributed(self) -> None:
            if self._on_cuda():
                return super().setup_distributed()
            from lightning.fabric.utilities.seed import reset_seed

            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

        def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):  # type: ignore[no-untyped-def]
            import deepspeed

            engine, ds_optimizer, _, _ = deepspeed.initialize(
                args=argparse.Namespace(device_rank=self._device_rank),
                config=self.config,
                model=model,
                model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
                optimizer=optimizer,
                lr_scheduler=lr_scheduler,
                dist_init_required=False,
            )
            return_freed_memory_to_os()  # the whole model each rank built before partitioning
            return engine, ds_optimizer

        def _initialize_deepspeed_inference(self, model):  # type: ignore[no-untyped-def]
            if self._on_cuda():
                return super()._initialize_deepspeed_inference(model)
            import deepspeed

            # Same config subset as the parent (throughput timers need a micro-batch size).
            inference_config: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1}
            for key in ("bf16", "fp16"):
                if key in self.config:
                    inference_config[key] = self.config[key]
            if self.zero_stage_3:
                inference_config["zero_allow_untested_optimizer"] = self.config["zero_allow_untested_optimizer"]
                inference_config["zero_optimization"] = self.config["zero_optimization"]
            remove_module_hooks(model)
            self.model, _, _, _ = deepspeed.initialize(
                args=argparse.Namespace(device_rank=self._device_rank),
                config=inference_config,
                model=model,
                optimizer=None,
                lr_scheduler=None,
                model_parameters=[],
                dist_init_required=False,
            )

        def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
            final = str(self.broadcast(str(filepath)))
            staging = final + ".tmp"
            if self.is_global_zero:
                remove_path(staging)  # a stale one from a crashed save
            self.barrier("deepspeed_save_start")
            start = time.perf_counter()
            super().save_checkpoint(checkpoint, staging, storage_options)
            self.barrier("deepspeed_save_written")  # every rank's shards are on disk
            if self.is_global_zero:
                ckpt_io.write_complete_marker(staging, step=checkpoint.get("global_step"), world_size=self.world_size)
                publish_dir(staging, final)
                size = sum(p.stat().st_size for p in Path(final).rglob("*") if p.is_file())
                print(
                    f"physfm: checkpoint {final} written in {time.perf_counter() - start:.1f} s "
                    f"({size / 2**30:.2f} GiB, {self.world_size} ranks)",
                    flush=True,
                )
            self.barrier("deepspeed_save_published")

        def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
            # DeepSpeed itself unpickles with weights_only=False; refuse code-carrying files first.
            ckpt_io.assert_checkpoint_safe(checkpoint_path)
            fitting = self.lightning_module.trainer.state.fn == TrainerFn.FITTING
            self._merged_zero3 = (
                self.zero_stage_3 and not fitting and not self.load_full_weights and os.path.isdir(checkpoint_path)
            )
            if not self._merged_zero3:
                start = time.perf_counter()
                loaded = super().load_checkpoint(checkpoint_path, weights_only)
                if self.is_global_zero:
                    print(
                        f"physfm: checkpoint {checkpoint_path} loaded in {time.perf_counter() - start:.1f} s",
                        flush=True,
                    )
                return loaded
            # validate/test/predict: DeepSpeed cannot restore ZeRO-3 shards into an engine built without an
            # optimizer (deepspeed#7272, also on GPU).  Merge the shards into full weights on rank 0 and let
            # load_model_state_dict copy them in layer by layer (the parent's full-weights path).
            state = (
                ckpt_io.consolidate_state_dict(checkpoint_path, require_complete=False) if self.is_global_zero else {}
            )
            return {**ckpt_io.deepspeed_client_state(checkpoint_path), "state_dict": state}

        def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
            if getattr(self, "_merged_zero3", False):
                self.model_to_device()
                self._restore_zero_state(checkpoint, strict=strict)
            else:
                super().load_model_state_dict(checkpoint, strict=strict)

    _CPUDeepSpeedStrategy.__name__ = _CPUDeepSpeedStrategy.__qualname__ = "CPUDeepSpeedStrategy"
    return _CPUDeepSpeedStrategy


_STRATEGY_CLASS: type | None = None


def cpu_deepspeed_strategy_class() -> type:
    global _STRATEGY_CLASS
    if _STRATEGY_CLASS is None:
        _STRATEGY_CLASS = _make_cpu_deepspeed_strategy_class()
    return _STRATEGY_CLASS


def __getattr__(name: str) -> Any:  # PEP 562: `from physfm.train.strategies import CPUDeepSpeedStrategy`
    if name == "CPUDeepSpeedStrategy":
        return cpu_deepspeed_strategy_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + ["CPUDeepSpeedStrategy"])
