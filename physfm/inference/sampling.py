"""How each model kind samples, one typed record per kind, and the routing of options by name.

``ARSampling`` and ``DiffusionSampling`` name every option their kind takes; each field says when it
applies (``at``: "load", fixed when the model is built, or "rollout", per call). :class:`Sampling`
holds both for callers that serve either kind (``physfm evaluate``/``rollout``): the kind the run
turns out to be takes its own record, and the other kind's options must be left unset. The CLI flags
are the field names with dashes (``--top-k`` → ``top_k``), so an error names both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_pipelines.errors import InputError

if TYPE_CHECKING:
    import torch

SAMPLERS = ("euler", "heun")


def _at(stage: str, default: Any) -> Any:
    return field(default=default, metadata={"at": stage})


@dataclass(frozen=True)
class ARSampling:
    """An AR model: greedy at ``temperature`` 0, else softmax sampling (``top_k`` optional);
    ``refiner`` "auto" loads the run's refiner when it has one, a path loads that one, None/False
    none; ``dtype`` the transformer's (None = as saved)."""

    temperature: float = _at("rollout", 0.0)
    top_k: int | None = _at("rollout", None)
    refiner: str | Path | bool | None = _at("load", "auto")
    dtype: str | torch.dtype | None = _at(
        "load", None
    )  # checked where it is applied, naming the run

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError(f"temperature: must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k: must be >= 1 or unset, got {self.top_k}")


@dataclass(frozen=True)
class DiffusionSampling:
    """A diffusion model: ``sampling_steps`` ODE steps with the ``sampler`` ("euler"/"heun"),
    latents rounded to the codes when ``snap_to_codes``; None keeps the run's ``diffusion:``
    setting."""

    sampling_steps: int | None = _at("load", None)
    sampler: str | None = _at("load", None)
    snap_to_codes: bool | None = _at("load", None)

    def __post_init__(self) -> None:
        if self.sampling_steps is not None and self.sampling_steps < 1:
            raise InputError(f"sampling_steps: must be >= 1, got {self.sampling_steps}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise InputError(
                f"sampler: expected one of {', '.join(SAMPLERS)}, got {self.sampler!r}"
            )


KIND_OPTIONS: dict[str, type] = {"ar": ARSampling, "diffusion": DiffusionSampling}


def option_names(options_type: type, stage: str | None = None) -> list[str]:
    """The fields of a kind's options record (those that apply at ``stage``, when given)."""
    return [f.name for f in dataclasses.fields(options_type) if stage in (None, f.metadata["at"])]


def unset(value: Any) -> bool:
    """Whether an option's value means "not asked for": what callers serving every kind pass by
    default (``refiner="auto"``, ``sampling_steps=None``, ``temperature=0.0``, ``refine=False``)."""
    return (
        value is None
        or value is False
        or (isinstance(value, str) and value == "auto")
        or value == 0
    )


@dataclass(frozen=True)
class Sampling:
    """Both kinds' options, for a caller that serves either kind."""

    ar: ARSampling = field(default_factory=ARSampling)
    diffusion: DiffusionSampling = field(default_factory=DiffusionSampling)

    @classmethod
    def from_options(cls, **options: Any) -> Sampling:
        """Options by name (the CLI's flags) → each kind's record; a name no kind takes is a
        TypeError."""
        unknown = [
            name
            for name in options
            if not any(name in option_names(t) for t in KIND_OPTIONS.values())
        ]
        if unknown:
            raise TypeError(f"unexpected option(s) {', '.join(unknown)}: no model kind takes them")
        return cls(
            ar=ARSampling(**{k: v for k, v in options.items() if k in option_names(ARSampling)}),
            diffusion=DiffusionSampling(
                **{k: v for k, v in options.items() if k in option_names(DiffusionSampling)}
            ),
        )

    def options(self, stage: str) -> dict[str, Any]:
        """Every kind's options that apply at ``stage``, by name (a model keeps its own, refuses the
        rest)."""
        return {
            name: getattr(record, name)
            for record in (self.ar, self.diffusion)
            for name in option_names(type(record), stage)
        }
