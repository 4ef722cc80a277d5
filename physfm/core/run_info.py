"""``run.json``: what a run directory records so that a checkpoint becomes a usable model (export,
rollout, evaluate, fine-tune, probe). One dataclass writes and reads it for every model kind, and
its reader and writer are the only places its model sections turn from JSON into the typed configs
and back."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from data_pipelines.atomic import atomic_write_text
from data_pipelines.config import ConfigError, from_dict
from physfm.core.errors import CheckpointError
from physfm.core.model_config import DiffusionConfig, ModelConfig

RUN_INFO = "run.json"
MODEL_KINDS = ("ar", "diffusion")
Section = TypeVar("Section", ModelConfig, DiffusionConfig)


@dataclass
class RunInfo:
    kind: str  # "ar" (token ids) or "diffusion" (continuous latents)
    model: ModelConfig
    dataset_names: list[str]  # dataset-conditioning vocabulary, in id order
    n_context_frames: int  # token (= latent) frames of context per training window
    n_frames: int  # token frames per training window
    tokenizer: str  # the tokenizer checkpoint the model reads and writes through
    tokenizer_fingerprint: str
    tokens: list[str] = field(default_factory=list)  # token shard sets trained on (kind "ar")
    # field shard sets trained on (kind "diffusion")
    shards: list[str] = field(default_factory=list)
    diffusion: DiffusionConfig | None = None  # kind "diffusion" only

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise CheckpointError(
                f"{RUN_INFO}: kind {self.kind!r} is not one of {', '.join(MODEL_KINDS)}"
            )
        if not 0 < self.n_context_frames < self.n_frames:
            raise CheckpointError(
                f"{RUN_INFO}: n_context_frames={self.n_context_frames} must be in [1, n_frames={self.n_frames})"
            )
        if self.kind == "diffusion" and self.diffusion is None:
            raise CheckpointError(f"{RUN_INFO}: a diffusion run needs its 'diffusion' section")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.diffusion is None:
            del data["diffusion"]
        return data

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / RUN_INFO
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = RUN_INFO) -> RunInfo:
        """The run record in ``data`` (a run.json, or an export's config.json: keys it does not know
        are left out). Options a model section lacks take their defaults: runs written before them
        still load."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = {"kind": "ar", **data}
        fields = {k: v for k, v in data.items() if k in names}
        if "model" in fields:
            fields["model"] = _section(ModelConfig, fields["model"], "model", source)
        if fields.get("diffusion") is not None:
            fields["diffusion"] = _section(
                DiffusionConfig, fields["diffusion"], "diffusion", source
            )
        try:
            return cls(**fields)
        except TypeError as err:  # a missing field
            raise CheckpointError(f"{source}: not a physfm run description ({err})") from None

    @classmethod
    def read(cls, run_dir: str | Path) -> RunInfo:
        path = Path(run_dir) / RUN_INFO
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: unreadable run description ({err})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: not a JSON object")
        return cls.from_dict(data, path)


def _section(config: type[Section], data: Any, key: str, source: str | Path) -> Section:
    """The JSON object under ``key`` as its config dataclass, each value checked against its type
    and the whole validated by the config loader's own converter: an unknown option (a run.json from
    a newer physfm, or an edited one) or a bad value is one error naming the file and the key."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: '{key}' must be a JSON object, got {type(data).__name__}")
    try:
        return from_dict(config, data, key)
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None
