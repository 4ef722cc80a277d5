"""physfm: pretrain, fine-tune, probe and steer discrete-token physics foundation models.

    from physfm import PhysicsModel
    model = PhysicsModel.from_pretrained("runs/quickstart/pretrain")
    pred = model.rollout(context, horizon=8, dataset="gray_scott2d")   # [T_in, C, *space] → [8, C, *space]

Names are imported lazily so ``import physfm`` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PhysicsModel": "physfm.inference",
    "ARPhysicsModel": "physfm.inference",
    "DiffusionPhysicsModel": "physfm.inference",
    "PhysicsTransformer": "physfm.models.ar",
    "LatentFlowTransformer": "physfm.models.diffusion",
    "ModelConfig": "physfm.core.model_config",
    "PretrainConfig": "physfm.train.config",
    "load_pretrain_config": "physfm.train.config",
    "run_pretrain": "physfm.train.pretrain",
    "StrategyConfig": "physfm.train.strategies",
    "export_model": "physfm.inference.loading",
    "load_ar_model": "physfm.inference.loading",
    "load_model": "physfm.inference.loading",
    "evaluate": "physfm.eval.evaluate",
    "estimate": "physfm.train.estimate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'physfm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
