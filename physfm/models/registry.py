"""Model kinds: the name a run records in run.json (``kind``) → the network it builds.

model = build_model(RunInfo.read(run_dir))   # PhysicsTransformer or LatentFlowTransformer
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from physfm.core.errors import CheckpointError
from physfm.core.run_info import RunInfo
from physfm.models.ar import PhysicsTransformer
from physfm.models.diffusion import LatentFlowTransformer

MODEL_BUILDERS: dict[str, Callable[[RunInfo], nn.Module]] = {
    "ar": lambda info: PhysicsTransformer(info.model),
    "diffusion": lambda info: LatentFlowTransformer(info.model, info.diffusion),
}


def build_model(info: RunInfo) -> nn.Module:
    """The untrained network of the run's kind with the sizes its record gives."""
    if info.kind not in MODEL_BUILDERS:
        raise CheckpointError(
            f"model kind {info.kind!r}: expected one of {', '.join(MODEL_BUILDERS)}"
        )
    return MODEL_BUILDERS[info.kind](info)
