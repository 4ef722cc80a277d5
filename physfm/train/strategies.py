"""Launch layer, config side: which strategy, accelerator, device count and precision a run uses.

The model never sees any of this (torchtitan habit: parallelism is applied from outside).  One
``StrategyConfig`` (a section of the pretrain/finetune configs) becomes ``Trainer`` keyword
arguments in :func:`physfm.train.launch.build_trainer_kwargs`; this module imports neither Lightning
nor DeepSpeed, so a CLI verb that only reads a config starts at once.

The only CPU/GPU difference is what the config resolves to (accelerator, precision, process-group
backend).  The DeepSpeed strategy is :class:`physfm.train.deepspeed_cpu.CPUDeepSpeedStrategy` on
both: on CUDA it *is* Lightning's ``DeepSpeedStrategy``; on a CPU it lifts three CUDA-only
assumptions so the same ZeRO JSONs run on gloo.  Launchers are Lightning's to detect (torchrun →
TorchElasticEnvironment, srun → SLURMEnvironment).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from data_pipelines.config import ConfigError

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEEPSPEED_CONFIG_DIR = REPO_ROOT / "configs" / "deepspeed"
# A DeepSpeed JSON may say "auto" for values Lightning fills from the Trainer
# (gradient_accumulation_steps from accumulate_grad_batches, train_micro_batch_size_per_gpu from the
# loader, gradient_clipping from gradient_clip_val, bf16 from precision) or that DeepSpeed defaults;
# "auto" entries are dropped.


@dataclass
class StrategyConfig:
    """How a run is parallelised and at what precision (the ``strategy:`` section of a config)."""

    name: Literal["auto", "single", "ddp", "deepspeed"] = "auto"
    # JSON path; None → configs/deepspeed/zero{stage}[_offload].json
    deepspeed_config: str | None = None
    zero_stage: int | None = None  # overrides the JSON's zero_optimization.stage
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer state to CPU (DeepSpeedCPUAdam)
    offload_params: bool = False  # ZeRO-3 parameter offload to CPU
    # auto: bf16-mixed on GPU, 32-true on CPU
    precision: Literal["auto", "32-true", "bf16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    # per node; auto: the launcher's processes per node, else Lightning's
    devices: int | str = "auto"
    num_nodes: int | str = "auto"  # auto: the launcher's node count, else 1
    activation_checkpointing: bool = False  # applied to the model's blocks by the training layer
    # auto: nccl on GPU, gloo on CPU
    process_group_backend: Literal["auto", "nccl", "gloo"] = "auto"

    def validate(self, prefix: str = "strategy") -> None:
        """Reject impossible combinations before any work, naming the offending key."""
        key = (prefix + ".") if prefix else ""
        for field in ("devices", "num_nodes"):
            value = getattr(self, field)
            if isinstance(value, str) and value != "auto" or isinstance(value, int) and value < 1:
                raise ConfigError(
                    f"{key}{field}: expected a positive integer or 'auto', got {value!r}"
                )
        if self.name == "single" and (
            self.devices not in (1, "auto") or self.num_nodes not in (1, "auto")
        ):
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
            raise ConfigError(
                f"{key}process_group_backend: nccl needs GPUs but accelerator=cpu (use gloo)"
            )
        if self.name == "deepspeed":
            stage = self.resolved_zero_stage(prefix)
            if self.offload_params and stage != 3:
                raise ConfigError(
                    f"{key}offload_params: parameter offload needs ZeRO stage 3, got stage {stage}"
                )
            if self.offload_optimizer and stage == 0:
                raise ConfigError(
                    f"{key}offload_optimizer: optimizer offload needs ZeRO stage 1, 2 or 3"
                )

    def deepspeed_config_path(self, prefix: str = "strategy") -> Path:
        """The JSON this config uses: the one named, else the stock one for its stage and
        offload."""
        if self.deepspeed_config is not None:
            return resolve_config_path(self.deepspeed_config, f"{prefix}.deepspeed_config")
        stage = 2 if self.zero_stage is None else self.zero_stage
        offload = (self.offload_optimizer or self.offload_params) and stage in (2, 3)
        name = f"zero{max(stage, 1)}{'_offload' if offload else ''}.json"
        return resolve_config_path(DEEPSPEED_CONFIG_DIR / name, f"{prefix}.zero_stage")

    def resolved_zero_stage(self, prefix: str = "strategy") -> int:
        if self.zero_stage is not None:
            if self.zero_stage not in (0, 1, 2, 3):
                raise ConfigError(
                    f"{prefix}.zero_stage: expected 0, 1, 2 or 3, got {self.zero_stage}"
                )
            return self.zero_stage
        path = self.deepspeed_config_path(prefix)
        stage = (
            read_deepspeed_json(path, f"{prefix}.deepspeed_config")
            .get("zero_optimization", {})
            .get("stage", 0)
        )
        if stage not in (0, 1, 2, 3):
            raise ConfigError(f"{path}: zero_optimization.stage must be 0..3, got {stage!r}")
        return int(stage)


def resolve_config_path(path: str | Path, key: str) -> Path:
    """A config path as given (relative to the working directory), else relative to the
    repository."""
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
    """Remove ``"auto"`` values and ``_comment``-style keys so Lightning/DeepSpeed defaults
    apply."""
    out = {}
    for k, v in tree.items():
        if k.startswith("_") or v == "auto":
            continue
        out[k] = _drop_auto(v) if isinstance(v, dict) else v
    return out


def build_deepspeed_config(cfg: StrategyConfig, prefix: str = "strategy") -> dict[str, Any]:
    """The DeepSpeed config dict a run uses: JSON, minus "auto" values, plus the config's
    overrides."""
    ds = _drop_auto(
        read_deepspeed_json(cfg.deepspeed_config_path(prefix), f"{prefix}.deepspeed_config")
    )
    zero = ds.setdefault("zero_optimization", {})
    zero["stage"] = cfg.resolved_zero_stage(prefix)
    if cfg.offload_optimizer:
        zero.setdefault("offload_optimizer", {"device": "cpu", "pin_memory": True})
    if cfg.offload_params:
        zero.setdefault("offload_param", {"device": "cpu", "pin_memory": True})
    # Lightning refuses it: it comes from accumulate_grad_batches
    if "gradient_accumulation_steps" in ds:
        raise ConfigError(
            f'{prefix}.deepspeed_config: set gradient_accumulation_steps to "auto" in '
            f"{cfg.deepspeed_config_path(prefix)} and use trainer.accumulate_grad_batches"
        )
    # our optimizer comes from configure_optimizers
    ds.setdefault("zero_allow_untested_optimizer", True)
    return ds


def uses_cpu_adam(cfg: StrategyConfig) -> bool:
    """Whether the optimizer must be DeepSpeedCPUAdam: optimizer state offloaded to the CPU
    (DeepSpeed refuses a client torch optimizer there)."""
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

        return DeepSpeedCPUAdam(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adamw_mode=True
        )
    import torch

    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def resolve_accelerator(cfg: StrategyConfig) -> str:
    import torch

    if cfg.accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("strategy.accelerator: gpu requested but no CUDA device is visible")
    return cfg.accelerator


def return_freed_memory_to_os() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``); False where libc has
    none.

    Each rank builds the whole model before DeepSpeed partitions it; the freed full-size tensors
    otherwise stay in the process's heap, resident but unused (bench/scale.py: 1.4 GiB per rank of
    the 1b on CPU)."""
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
    checkpointing, applied from outside the model).  State-dict keys are unchanged.  Returns the
    count."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as wrap_blocks,
    )

    count = sum(isinstance(m, block_types) for m in module.modules())
    wrap_blocks(module, check_fn=lambda m: isinstance(m, block_types))
    return count
