"""Checkpoints: atomic writes (data_pipelines.atomic's), completeness, keep-last-k, ZeRO
consolidation, safetensors export.

What "complete" means (so a half-written checkpoint is never taken for whole):
- a directory checkpoint (DeepSpeed: one shard per rank) is complete when its ``COMPLETE`` marker,
  written after every rank's shards, exists.  It is staged as ``NAME.tmp`` and renamed into place;
- a file checkpoint (``.ckpt`` from ddp/single) is written to a temporary name and ``os.replace``d,
  so a file at its final name is whole; torch's zip format also writes its end record last, which we
  check.
Nothing here unpickles code: every ``torch.load`` uses ``weights_only=True``, and DeepSpeed shards
(which DeepSpeed itself loads with ``weights_only=False``) are vetted with it first.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipelines import atomic
from data_pipelines.atomic import (
    atomic_path,
    atomic_write_text,
    disk_full_error,
    file_mode,
    is_disk_full,
    remove_path,
)
from data_pipelines.config import ConfigError
from physfm.core.errors import CheckpointError

if TYPE_CHECKING:
    import torch

COMPLETE_MARKER = "COMPLETE"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_STEP_RE = re.compile(r"step=(\d+)")


# ----------------------------------------------------------------------------- atomic writes
# The writes themselves are data_pipelines.atomic's; here only what a checkpoint adds to them.
def atomic_file(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """:func:`~data_pipelines.atomic.atomic_path` for a checkpoint file: running out of room raises
    :class:`CheckpointError` (which the training CLI reports as one line)."""
    return atomic_path(path, disk_full=CheckpointError)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_file(path) as tmp:
        try:
            # through a Python file: a failed write raises OSError (errno kept)
            with open(tmp, "wb") as fh:
                torch.save(obj, fh)
        # torch wraps it as an opaque "enforce fail"; surface the OSError
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """:func:`~data_pipelines.atomic.atomic_dir` for a directory checkpoint: the ``COMPLETE`` marker
    is written last, before the rename."""
    with atomic.atomic_dir(final) as staging:
        yield staging
        write_complete_marker(staging)


def write_complete_marker(directory: str | Path, **info: Any) -> None:
    """Write the marker that makes a directory checkpoint count as complete; call it last."""
    info = {"written_at": time.time(), **info}
    atomic_write_text(Path(directory) / COMPLETE_MARKER, json.dumps(info, default=str))


# ----------------------------------------------------------------------------- finding checkpoints
def is_complete(path: str | Path) -> bool:
    path = Path(path)
    if path.name.endswith((".tmp", ".old")):
        return False
    if path.is_dir():
        return (path / COMPLETE_MARKER).is_file()
    # a truncated torch file has no zip end record
    return path.is_file() and zipfile.is_zipfile(path)


def checkpoint_step(path: str | Path) -> int:
    """Training step of a checkpoint, from its name (``...step=120...``) or its marker; -1 if
    unknown."""
    path = Path(path)
    match = _STEP_RE.search(path.name)
    if match:
        return int(match.group(1))
    marker = path / COMPLETE_MARKER
    if marker.is_file():
        with contextlib.suppress(ValueError, TypeError):
            step = json.loads(marker.read_text()).get("step")
            return -1 if step is None else int(step)
    return -1


def list_checkpoints(directory: str | Path, pattern: str = "*.ckpt") -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (by step, then modification time)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(pattern) if is_complete(p)]
    return sorted(found, key=lambda p: (checkpoint_step(p), p.stat().st_mtime, p.name))


def find_latest_checkpoint(directory: str | Path, pattern: str = "*.ckpt") -> Path | None:
    """The newest complete checkpoint in ``directory`` (None if there is none): what a resume
    uses."""
    found = list_checkpoints(directory, pattern)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep_last: int, pattern: str = "*.ckpt") -> list[Path]:
    """Keep the newest ``keep_last`` complete checkpoints; remove older ones and leftovers of
    crashed saves (``*.tmp``, ``*.old``).  Call it from one rank, after a save finished.  Returns
    what was removed."""
    if keep_last < 1:
        raise ConfigError(f"keep_last must be >= 1, got {keep_last}")
    directory = Path(directory)
    complete = list_checkpoints(directory, pattern)
    leftovers = sorted(
        {*directory.glob("*.tmp"), *directory.glob(".*.tmp"), *directory.glob("*.old")}
    )
    doomed = complete[:-keep_last] + leftovers
    for path in doomed:
        remove_path(path)
    return doomed


# ----------------------------------------------------------------------------- safe loading
def _allowed_globals() -> list[Any]:
    """Harmless non-tensor types that Lightning/DeepSpeed put in checkpoints: plain data holders (a
    dataclass, enums, attribute bags) whose rebuilding runs no code of the file's choosing."""
    allowed: list[Any] = []
    with contextlib.suppress(ImportError):
        from lightning.fabric.utilities.data import AttributeDict

        allowed.append(AttributeDict)
    with contextlib.suppress(ImportError):  # in ZeRO optimizer shards
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    return allowed


def safe_torch_load(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load`` that never runs pickled code: refuses anything but tensors and plain data."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        lines = [
            ln.strip()
            for ln in str(err).splitlines()
            if "Unsupported" in ln or "global" in ln.lower()
        ]
        why = lines[0] if lines else type(err).__name__
        raise CheckpointError(
            f"{path}: refused, holds more than tensors and plain data (loading it would run pickled code): {why}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({str(err).splitlines()[0]})"
        ) from None


def assert_checkpoint_safe(path: str | Path) -> None:
    """Vet every file of a checkpoint (a file or a DeepSpeed directory) with ``weights_only=True``
    (memory-mapped, so tensors are not read) before a library that unpickles freely touches it."""
    path = Path(path)
    if path.is_dir():
        files = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file() and p.suffix in (".pt", ".ckpt", ".bin")
        ]
        if not files:
            raise CheckpointError(f"{path}: no checkpoint files inside")
    else:
        files = [path]
    for file in files:
        safe_torch_load(file, mmap=True)


# ----------------------------------------------------------------------------- consolidation
def consolidate_state_dict(
    path: str | Path, strip_prefix: str = "", require_complete: bool = True
) -> dict[str, torch.Tensor]:
    """Full fp32 ``state_dict`` of a checkpoint: a DeepSpeed ZeRO directory (shards merged with
    DeepSpeed's zero_to_fp32, after vetting) or a Lightning ``.ckpt`` file.  Keys starting with
    ``strip_prefix`` (e.g. ``"model."`` for the module inside a LightningModule) keep only the rest.
    ``require_complete=False`` accepts a directory without our marker (written by other tools)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        if require_complete and not is_complete(path):
            raise CheckpointError(
                f"{path}: incomplete checkpoint directory (no {COMPLETE_MARKER} marker)"
            )
        assert_checkpoint_safe(path)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(path))
        # DeepSpeed names shards by named_parameters(), which include wrappers that state_dict()
        # hides: Lightning's "_forward_module." and activation checkpointing's
        # "_checkpoint_wrapped_module.".
        state = {
            k.removeprefix("_forward_module.").replace("_checkpoint_wrapped_module.", ""): v
            for k, v in state.items()
        }
    else:
        if not is_complete(path):
            raise CheckpointError(f"{path}: incomplete or corrupt checkpoint file")
        loaded = safe_torch_load(path)
        if not isinstance(loaded, dict):
            raise CheckpointError(
                f"{path}: expected a dict checkpoint, got {type(loaded).__name__}"
            )
        state = loaded.get("state_dict", loaded)
    if strip_prefix:
        state = {k[len(strip_prefix) :]: v for k, v in state.items() if k.startswith(strip_prefix)}
        if not state:
            raise CheckpointError(f"{path}: no weights under prefix {strip_prefix!r}")
    return {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}


# Keys DeepSpeed adds to its model-state files; the rest is the caller's (Lightning's) client state.
_DEEPSPEED_KEYS = {
    "module",
    "buffer_names",
    "optimizer",
    "param_shapes",
    "frozen_param_shapes",
    "shared_params",
    "frozen_param_fragments",
    "lr_scheduler",
    "data_sampler",
    "random_ltd",
    "sparse_tensor_module_names",
    "skipped_steps",
    "global_steps",
    "global_samples",
    "dp_world_size",
    "mp_world_size",
    "ds_config",
    "ds_version",
}


def deepspeed_client_state(path: str | Path) -> dict[str, Any]:
    """The Lightning state (loops, callbacks, hyper-parameters, ...) saved inside a DeepSpeed
    checkpoint directory, read from rank 0's model-state file without unpickling code."""
    path = Path(path)
    latest = path / "latest"
    tag = latest.read_text().strip() if latest.is_file() else "checkpoint"
    files = sorted((path / tag).glob("*mp_rank_00_model_states.pt"))
    if not files:
        raise CheckpointError(f"{path}: no DeepSpeed model-state file under {tag}/")
    state = safe_torch_load(files[0])
    return {k: v for k, v in state.items() if k not in _DEEPSPEED_KEYS}


# ----------------------------------------------------------------------------- export
def export_safetensors(
    state_dict: dict[str, torch.Tensor], config_dict: dict[str, Any], out_dir: str | Path
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` to ``out_dir`` atomically (staged, then
    renamed). Refuses to replace a directory that holds anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists():
        extra = sorted(
            p.name
            for p in out_dir.iterdir()
            if p.name not in (WEIGHTS_NAME, CONFIG_NAME, COMPLETE_MARKER)
        )
        if extra:
            raise CheckpointError(
                f"{out_dir}: exists and holds other files ({', '.join(extra[:3])}); choose an empty or new directory"
            )
    tensors, seen = {}, set()
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        # tied weights: safetensors refuses shared memory
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    try:
        with atomic_dir(out_dir) as staging:
            save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
            # safetensors creates it 0600; exports are shared
            os.chmod(staging / WEIGHTS_NAME, file_mode())
            config_text = json.dumps(config_dict, indent=2, sort_keys=True, default=str) + "\n"
            (staging / CONFIG_NAME).write_text(config_text)
    # safetensors writes in Rust: its I/O error is text with the OS code
    except SafetensorError as err:
        code = re.search(r"(?:code: |os error )(\d+)", str(err))
        if code is None:
            raise CheckpointError(f"{out_dir}: not written ({err})") from None
        raise disk_full_or_os_error(
            out_dir, OSError(int(code[1]), os.strerror(int(code[1])))
        ) from None
    except OSError as err:
        raise disk_full_or_os_error(out_dir, err) from None
    return out_dir


def disk_full_or_os_error(target: Path, err: OSError) -> CheckpointError:
    """A failed write to ``target`` as one CheckpointError: the disk-full wording where it ran out
    of room."""
    if is_disk_full(err):
        return disk_full_error(target, err, CheckpointError)  # type: ignore[return-value]
    return CheckpointError(
        f"{target}: not written, {err.strerror or err}; the previous version, if any, is intact"
    )


def load_safetensors(out_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config_dict) of an export written by :func:`export_safetensors`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    weights, config = out_dir / WEIGHTS_NAME, out_dir / CONFIG_NAME
    for required in (weights, config):
        if not required.is_file():
            raise CheckpointError(f"{out_dir}: not an export, {required.name} missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({err})") from None
    try:
        config_dict = json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config}: invalid JSON ({err})") from None
    return state, config_dict


# ----------------------------------------------------------------------------- Lightning checkpoint
# IO
def atomic_checkpoint_io() -> Any:
    """A Lightning ``CheckpointIO`` for file checkpoints (ddp/single): writes atomically, loads with
    ``weights_only=True``.  (DeepSpeed directories are handled by CPUDeepSpeedStrategy.)"""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(
            self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
        ) -> None:
            if storage_options is not None:
                raise TypeError("AtomicCheckpointIO takes no storage_options")
            atomic_torch_save(checkpoint, path)

        def load_checkpoint(
            self, path: Any, map_location: Any = None, weights_only: bool | None = None
        ) -> dict:
            if not is_complete(path):
                raise CheckpointError(f"{path}: incomplete or corrupt checkpoint file")
            return safe_torch_load(path)

        def remove_checkpoint(self, path: Any) -> None:
            remove_path(path)

    return AtomicCheckpointIO()
