"""Model kinds: the name a run records in run.json (``kind``) → the network it builds.

model = build_model("ar", {"model": {...}})              # PhysicsTransformer
model = build_model("diffusion", {"model": {...}, "diffusion": {...}})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from physfm.core.errors import CheckpointError
from physfm.models.ar import PhysicsTransformer
from physfm.models.diffusion import DiffusionConfig, LatentFlowTransformer
from physfm.models.trunk import ModelConfig

MODEL_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "ar": lambda info: PhysicsTransformer(ModelConfig(**info["model"])),
    "diffusion": lambda info: LatentFlowTransformer(ModelConfig(**info["model"]), DiffusionConfig(**info["diffusion"])),
}


def build_model(kind: str, info: dict[str, Any]) -> nn.Module:
    """The untrained network of ``kind`` with the sizes in ``info`` (a run.json as a dict)."""
    if kind not in MODEL_BUILDERS:
        raise CheckpointError(f"model kind {kind!r}: expected one of {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[kind](info)
