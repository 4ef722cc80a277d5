"""Turn any model location into a model: a run directory (its newest complete checkpoint), a
checkpoint (a Lightning ``.ckpt`` file or a DeepSpeed ZeRO directory, whose shards are
consolidated), or an export directory (safetensors weights + a JSON config). Loading never unpickles
code: safetensors, or ``torch.load(weights_only=True)`` after vetting.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from data_pipelines.errors import DataError
from physfm.core.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    checkpoint_step,
    consolidate_state_dict,
    export_safetensors,
    find_latest_checkpoint,
    is_complete,
    load_safetensors,
)
from physfm.core.errors import CheckpointError
from physfm.core.run_info import RUN_INFO, RunInfo
from physfm.models.registry import build_model
from tokenizer.checkpoint import fingerprint

MODULE_PREFIX = "model."  # the transformer's attribute inside the LightningModule


def resolve_checkpoint(location: str | Path) -> tuple[Path, Path]:
    """(checkpoint or export path, run directory holding run.json) for a model location."""
    path = Path(location)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint, run or export directory")
    if path.is_dir() and (path / WEIGHTS_NAME).is_file():
        return path, path  # an export
    if path.is_dir() and (path / RUN_INFO).is_file():
        newest = find_latest_checkpoint(path / "checkpoints")
        broken = newer_incomplete_checkpoints(path / "checkpoints", newest)
        if newest is None:
            also = f" ({', '.join(p.name for p in broken)} incomplete or corrupt)" if broken else ""
            raise CheckpointError(
                f"{path}: run directory has no complete checkpoint in checkpoints/{also}"
            )
        if broken:  # a crash mid-save, a partial copy: say which weights are used, never silently
            print(
                f"physfm: warning: {broken[-1]} is incomplete or corrupt; using {newest} "
                f"(step {checkpoint_step(newest)}) instead",
                file=sys.stderr,
                flush=True,
            )
        return newest, path
    run_dir = path.parent.parent  # RUN/checkpoints/step=N.ckpt
    if not (run_dir / RUN_INFO).is_file():
        raise CheckpointError(
            f"{path}: cannot find the run's {RUN_INFO} next to its checkpoints/ folder"
        )
    return path, run_dir


def newer_incomplete_checkpoints(directory: Path, newest: Path | None) -> list[Path]:
    """Checkpoints in ``directory`` past ``newest`` (the newest complete one) that are not complete,
    oldest first: a run whose last save was cut off, or a partial copy."""
    if not directory.is_dir():
        return []
    after = checkpoint_step(newest) if newest is not None else -1
    found = [
        p for p in directory.glob("*.ckpt") if checkpoint_step(p) > after and not is_complete(p)
    ]
    return sorted(found, key=checkpoint_step)


def load_model_state(location: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state_dict of the bare transformer, run info) for any model location."""
    path, run_dir = resolve_checkpoint(location)
    if (path / WEIGHTS_NAME).is_file():
        return load_safetensors(path)
    info = RunInfo.read(run_dir).to_dict()
    info["checkpoint"] = str(path)
    return consolidate_state_dict(path, strip_prefix=MODULE_PREFIX), info


def model_kind(location: str | Path) -> str:
    """ "ar" or "diffusion": the kind in the run's run.json (an export's config.json), weights
    unread."""
    path, run_dir = resolve_checkpoint(location)
    meta = path / CONFIG_NAME if (path / WEIGHTS_NAME).is_file() else run_dir / RUN_INFO
    try:
        return str(json.loads(meta.read_text()).get("kind", "ar"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta}: unreadable model description ({err})") from None


def load_model(location: str | Path, kind: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(transformer in eval mode, run info) for any location, built for the run's kind; with
    ``kind`` the run must be of that kind (an AR-only tool refuses a diffusion model by name)."""
    state, info = load_model_state(location)
    run = RunInfo.from_dict(info, location)
    found = run.kind
    if kind is not None and found != kind:
        raise CheckpointError(
            f"{location}: a {found!r} model, not {kind!r}; load it with PhysicsModel.from_pretrained (physfm.inference)"
        )
    model = build_model(run)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{location}: weights do not match the {found} model config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval(), info


def load_ar_model(location: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(PhysicsTransformer in eval mode, run info)."""
    return load_model(location, kind="ar")


def load_diffusion_model(location: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(LatentFlowTransformer in eval mode, run info)."""
    return load_model(location, kind="diffusion")


def export_model(location: str | Path, out_dir: str | Path) -> Path:
    state, info = load_model_state(location)
    return export_safetensors(state, info, out_dir)


def _tokenizer_location(info: dict[str, Any], run_dir: Path) -> Path:
    recorded = info.get("tokenizer") or ""
    if not recorded:
        raise DataError(
            f"{run_dir}: the run does not name its tokenizer (run.json 'tokenizer' is empty); "
            "pass tokenizer=PATH (--tokenizer)"
        )
    for candidate in (Path(recorded), run_dir / recorded):
        if candidate.exists():
            return candidate
    raise DataError(
        f"{run_dir}: its tokenizer {recorded} does not exist (relative paths are tried from the "
        "working directory and the run directory); pass tokenizer=PATH (--tokenizer)"
    )


def load_with_tokenizer(
    load: Callable[[Path], tuple[nn.Module, dict[str, Any]]],
    location: Path,
    tokenizer: str | Path | None,
) -> tuple[nn.Module, dict[str, Any], Path, Path]:
    """``load(location)`` → (model, info), plus the run directory and the tokenizer path: the given
    one, else the one the run names; refused when its fingerprint differs from the one the run
    recorded."""
    try:
        model, info = load(location)
        _, run_dir = resolve_checkpoint(location)
    except CheckpointError as err:
        raise DataError(str(err)) from None
    tok_path = Path(tokenizer) if tokenizer else _tokenizer_location(info, run_dir)
    recorded = info.get("tokenizer_fingerprint")
    if recorded and fingerprint(tok_path) != recorded:
        raise DataError(
            f"{tok_path}: not the tokenizer the model was trained with (fingerprint "
            f"{fingerprint(tok_path)[:12]}, the run recorded {recorded[:12]})"
        )
    return model, info, run_dir, tok_path
