"""Turn any training checkpoint into a self-contained model: safetensors weights + a JSON config.

A "model location" may be a run directory (its newest complete checkpoint), a checkpoint (a Lightning
``.ckpt`` file or a DeepSpeed ZeRO directory, whose shards are consolidated), or an export directory.
Loading never unpickles code: safetensors, or ``torch.load(weights_only=True)`` after vetting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from physfm.checkpoint import (
    CONFIG_NAME, WEIGHTS_NAME, CheckpointError, consolidate_state_dict, export_safetensors,
    find_latest_checkpoint, load_safetensors,
)

MODULE_PREFIX = "model."  # the transformer's attribute inside the LightningModule


def resolve_checkpoint(location: str | Path) -> tuple[Path, Path]:
    """(checkpoint or export path, run directory holding run.json) for a model location."""
    from physfm.pretrain import RUN_INFO

    path = Path(location)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint, run or export directory")
    if path.is_dir() and (path / WEIGHTS_NAME).is_file():
        return path, path  # an export
    if path.is_dir() and (path / RUN_INFO).is_file():
        newest = find_latest_checkpoint(path / "checkpoints")
        if newest is None:
            raise CheckpointError(f"{path}: run directory has no complete checkpoint in checkpoints/")
        return newest, path
    run_dir = path.parent.parent  # RUN/checkpoints/step=N.ckpt
    if not (run_dir / RUN_INFO).is_file():
        raise CheckpointError(f"{path}: cannot find the run's {RUN_INFO} next to its checkpoints/ folder")
    return path, run_dir


def load_model_state(location: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state_dict of the bare transformer, run info) for any model location."""
    from physfm.pretrain import RUN_INFO

    path, run_dir = resolve_checkpoint(location)
    if (path / WEIGHTS_NAME).is_file():
        return load_safetensors(path)
    info = json.loads((run_dir / RUN_INFO).read_text())
    info["checkpoint"] = str(path)
    return consolidate_state_dict(path, strip_prefix=MODULE_PREFIX), info


def model_kind(location: str | Path) -> str:
    """"ar" or "diffusion": the kind in the run's run.json (an export's config.json), weights unread."""
    from physfm.pretrain import RUN_INFO

    path, run_dir = resolve_checkpoint(location)
    meta = path / CONFIG_NAME if (path / WEIGHTS_NAME).is_file() else run_dir / RUN_INFO
    try:
        return str(json.loads(meta.read_text()).get("kind", "ar"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta}: unreadable model description ({err})") from None


def load_ar_model(location: str | Path):
    """(PhysicsTransformer in eval mode, run info)."""
    from physfm.model import ModelConfig, PhysicsTransformer

    state, info = load_model_state(location)
    if info.get("kind", "ar") != "ar":
        raise CheckpointError(f"{location}: a {info['kind']!r} model, not an AR one; load it with "
                              "PhysicsModel.from_pretrained (physfm.rollout)")
    model = PhysicsTransformer(ModelConfig(**info["model"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{location}: weights do not match the model config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), info


def load_model(location: str | Path):
    """(AR or diffusion transformer in eval mode, run info), by the run's kind (probing, steering)."""
    if model_kind(location) == "diffusion":
        from physfm.diffusion_rollout import load_diffusion_model

        return load_diffusion_model(location)
    return load_ar_model(location)


def export_model(location: str | Path, out_dir: str | Path) -> Path:
    state, info = load_model_state(location)
    return export_safetensors(state, info, out_dir)
