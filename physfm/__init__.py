"""physfm: pretrain, fine-tune, probe and steer discrete-token physics foundation models.

    from physfm import PhysicsModel
    model = PhysicsModel.from_pretrained("runs/quickstart/pretrain")
    pred = model.rollout(context, horizon=8, dataset="gray_scott2d")   # [T_in, C, *space] → [8, C, *space]

Names are imported lazily so ``import physfm`` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PhysicsModel": "physfm.rollout",
    "PhysicsTransformer": "physfm.model",
    "ModelConfig": "physfm.model",
    "PretrainConfig": "physfm.pretrain",
    "load_pretrain_config": "physfm.pretrain",
    "run_pretrain": "physfm.pretrain",
    "StrategyConfig": "physfm.strategies",
    "export_model": "physfm.export",
    "load_ar_model": "physfm.export",
    "evaluate": "physfm.evaluate",
    "estimate": "physfm.estimate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'physfm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
