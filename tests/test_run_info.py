"""run.json: an old run's record (no ``kind``, a model section without the options added since)
still loads into the model it describes; the model config a run builds is decided once, before the
build."""

from __future__ import annotations

import dataclasses
import json

import pytest

from physfm.core.errors import CheckpointError
from physfm.core.run_info import RunInfo
from physfm.models.diffusion import DiffusionConfig, LatentFlowTransformer
from physfm.models.registry import build_model
from physfm.models.trunk import ModelConfig

# the sizes an early AR run recorded, before "kind", "head", "prediction" and the rest
OLD_MODEL = {
    "vocab_size": 64,
    "n_layer": 1,
    "n_head": 2,
    "n_kv_head": 1,
    "d_model": 16,
    "ffn_hidden": 32,
    "max_frames": 3,
    "grid_shape": [2, 2],
    "n_spatial_dims": 2,
    "n_datasets": 2,
}
OLD_RUN = {
    "model": OLD_MODEL,
    "dataset_names": ["waves"],
    "n_context_frames": 2,
    "n_frames": 3,
    "tokenizer": "runs/tokenizer",
    "tokenizer_fingerprint": "abc",
    "tokens": ["runs/tokens"],
}


def test_an_old_run_json_loads_and_builds_its_model(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({**OLD_RUN, "written_by": "an older physfm"}))
    info = RunInfo.read(tmp_path)
    assert (
        info.kind == "ar"
        and info.tokens == ["runs/tokens"]
        and info.shards == []
        and info.diffusion is None
    )
    model = build_model(info)
    assert model.config == ModelConfig(**OLD_MODEL)  # the options added since take their defaults
    assert RunInfo.from_dict(info.to_dict()) == info  # and it writes back what it read


def test_the_model_sections_are_typed_and_written_back_as_plain_json(tmp_path):
    """The run record carries the configs typed (the one reader converts); the file keeps its
    format."""
    info = RunInfo.from_dict(OLD_RUN)
    assert (
        isinstance(info.model, ModelConfig)
        and info.model.head == "vocab"
        and info.model.fsq_levels == []
    )
    assert info.model.prediction == "raster" and info.model.greedy == "mode"
    # a diffusion run's section; the rest defaults
    diffusion = {"latent_dim": 2, "fsq_levels": [5, 5]}
    run = {
        **OLD_RUN,
        "kind": "diffusion",
        "model": {**OLD_MODEL, "kind": "diffusion"},
        "diffusion": diffusion,
    }
    info = RunInfo.from_dict(run)
    assert info.diffusion == DiffusionConfig(latent_dim=2, fsq_levels=[5, 5])
    assert isinstance(build_model(info), LatentFlowTransformer)
    saved = json.loads(info.write(tmp_path).read_text())
    assert (
        saved["model"] == dataclasses.asdict(info.model)
        and saved["diffusion"]["sampling_steps"] == 4
    )
    assert RunInfo.read(tmp_path) == info


def test_an_unknown_model_option_is_named(tmp_path):
    (tmp_path / "run.json").write_text(
        json.dumps({**OLD_RUN, "model": {**OLD_MODEL, "n_experts": 8}})
    )
    with pytest.raises(CheckpointError, match=r"run.json: unknown config key model.n_experts"):
        RunInfo.read(tmp_path)


def test_a_run_json_missing_a_field_names_the_file(tmp_path):
    (tmp_path / "run.json").write_text(
        json.dumps({k: v for k, v in OLD_RUN.items() if k != "n_frames"})
    )
    with pytest.raises(CheckpointError, match="run.json: not a physfm run description"):
        RunInfo.read(tmp_path)


def test_activation_checkpointing_is_in_the_config_the_model_is_built_from():
    from physfm.train.config import PretrainConfig
    from physfm.train.recipes import _module_args, built_model_config

    cfg = PretrainConfig()
    cfg = dataclasses.replace(
        cfg, strategy=dataclasses.replace(cfg.strategy, activation_checkpointing=True)
    )
    assert (
        built_model_config(cfg).activation_checkpointing and not cfg.model.activation_checkpointing
    )
    info = {"dataset_names": ["waves"], "n_context": 1}
    # typed: no dict round trip
    assert _module_args(cfg, info)["model"].activation_checkpointing is True
