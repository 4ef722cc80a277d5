"""The typed shard manifest: round trip, older manifests, clear errors, and the token set's
tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_pipelines.clips import WindowSpec
from data_pipelines.config import ConfigError
from data_pipelines.errors import DataError
from data_pipelines.manifest import CLIPS, FIELDS, TOKENS, WINDOWS, Manifest, TokenLayout
from data_pipelines.shards import read_manifest
from data_pipelines.synthetic import make_token_shards
from tests.tokenizer_fixtures import write_wave_shards
from tokenizer.checkpoint import fingerprint, save_tokenizer
from tokenizer.encode import decode_shards, encode_shards
from tokenizer.model import DatasetSpec, Tokenizer, TokenizerConfig


def write_json(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def field_manifest(**changes) -> dict:
    data = {
        "format": "physfm-shards",
        "version": 2,
        "layout": CLIPS,
        "n_input": 4,
        "n_output": 1,
        "stride": 1,
        "corpus_plan": [{"system": "waves"}],
        "datasets": {
            "waves": {
                "channel_names": ["u"],
                "spatial_shape": [8, 8],
                "stats": {"mean": [0.0], "std": [1.0]},
            }
        },
        "splits": {
            "train": {
                "n_samples": 3,
                "shards": [{"path": "train/shard-000000.tar", "n_samples": 3}],
            }
        },
    }
    return {**data, **changes}


def test_round_trip_keeps_every_key(tmp_path):
    data = field_manifest()
    # a key the reader does not model
    data["datasets"]["waves"]["fields"] = [{"name": "u", "order": 0}]
    manifest = Manifest.from_json(data, "m.json")
    manifest.write(tmp_path)
    again = Manifest.load(tmp_path)
    assert again.to_json() == manifest.to_json()
    assert again.replace(location="") == manifest.replace(location="")
    assert again.kind == FIELDS and again.layout == CLIPS and again.window == WindowSpec(4, 1, 1)
    assert again.datasets["waves"].extra["fields"] == [{"name": "u", "order": 0}]
    assert again.corpus_plan == [{"system": "waves"}]
    # the public dict form goes through the same reader
    assert read_manifest(tmp_path) == again.to_json()
    assert not list(tmp_path.glob(".tmp*"))  # written by rename


def test_older_manifests_load(tmp_path):
    from physfm.train.data import token_layout

    old_tokens = make_token_shards(tmp_path / "tokens", n_windows=4, n_shards=1)
    raw = json.loads((old_tokens / "manifest.json").read_text())
    # as written before manifests had them
    for key in ("kind", "tokenizer", "token_layout", "layout"):
        del raw[key]
    tokens = Manifest.load(write_json(old_tokens, raw))
    assert tokens.is_tokens and tokens.kind == TOKENS and tokens.fingerprint == "test-tokenizer"
    assert tokens.tokenizer.temporal_compression == 1 and not tokens.tokenizer.conditional
    assert tokens.token_layout is None and token_layout(tokens) == TokenLayout(2, 3)
    v1 = field_manifest(version=1)
    del v1["layout"], v1["stride"]
    fields = Manifest.load(write_json(tmp_path / "v1", v1))
    assert (
        fields.kind == FIELDS
        and fields.layout == WINDOWS
        and fields.window.stride == 1
        and not fields.is_tokens
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("n_input"), "manifest lacks key 'n_input'"),
        (lambda d: d.pop("datasets"), "manifest lacks key 'datasets'"),
        (
            lambda d: d["datasets"]["waves"].pop("channel_names"),
            "manifest lacks key 'datasets.waves.channel_names'",
        ),
        (lambda d: d.update(n_output="1"), "manifest key 'n_output' must be int"),
        (lambda d: d["splits"]["train"]["shards"][0].pop("path"), "'splits.train.shards[0].path'"),
        (lambda d: d.update(kind="pictures"), "manifest key 'kind' is 'pictures'"),
        (lambda d: d.update(kind="tokens"), "lacks key 'tokenizer_fingerprint'"),
        (lambda d: d.update(layout="rows"), "unknown shard layout 'rows'"),
        (lambda d: d.update(version=9), "manifest version 9 is newer"),
    ],
)
def test_bad_manifest_names_the_file_and_key(tmp_path, change, message):
    data = field_manifest()
    change(data)
    folder = write_json(tmp_path / "s", data)
    with pytest.raises(DataError, match="manifest") as err:
        Manifest.load(folder)
    assert str(err.value).startswith(str(folder / "manifest.json")) and message in str(err.value)


def test_unreadable_manifest_is_a_data_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest.json: unreadable manifest"):
        Manifest.load(tmp_path)
    with pytest.raises(DataError, match="no manifest"):
        Manifest.load(tmp_path / "missing")


def test_resolve_window_is_the_one_default(tmp_path):
    clips = Manifest.from_json(field_manifest(), "m.json")
    assert clips.resolve_window() == WindowSpec(4, 1, 1)
    assert clips.resolve_window(n_output=3) == WindowSpec(4, 3, 1)
    windows = Manifest.from_json(field_manifest(layout=WINDOWS), "m.json")
    with pytest.raises(DataError, match="fixed 4\\+1 windows"):
        windows.resolve_window(WindowSpec(4, 3, 1))


def tiny_tokenizer(seed: int, temporal_compression: int = 1) -> Tokenizer:
    torch.manual_seed(seed)
    cfg = TokenizerConfig(
        n_spatial_dims=2,
        levels=[4, 4],
        spatial_compression=4,
        patch_size=2,
        width=8,
        max_width=16,
        temporal_compression=temporal_compression,
    )
    return Tokenizer(cfg, {"waves": DatasetSpec(["u"], [0.0], [1.0])})


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    shards = write_wave_shards(
        root / "shards", {"waves": (["u"], (16, 16))}, n_train=4, n_valid=2, n_input=3
    )
    ckpt = save_tokenizer(tiny_tokenizer(0, temporal_compression=2), root / "tok")
    other = save_tokenizer(tiny_tokenizer(1, temporal_compression=2), root / "other")
    tokens = encode_shards(ckpt, shards, root / "tokens", batch_size=4)
    return root, shards, ckpt, other, tokens


def test_token_layout_is_carried_in_the_token_manifest(encoded):
    root, _, ckpt, _, tokens = encoded
    manifest = Manifest.load(tokens)
    assert manifest.kind == TOKENS and manifest.fingerprint == fingerprint(ckpt)
    assert (
        manifest.tokenizer.checkpoint == str(ckpt) and manifest.tokenizer.temporal_compression == 2
    )
    # 3 + 1 frames at compression 2: frame 0, then groups {1, 2} and {3}; the context ends on a
    # group
    assert manifest.token_layout == TokenLayout(n_context_frames=2, n_frames=3, grid=(4, 4))
    assert manifest.datasets["waves"].token_grid == (3, 4, 4)
    decoded = Manifest.load(decode_shards(ckpt, tokens, root / "decoded", batch_size=4))
    assert (
        decoded.kind == "decoded"
        and decoded.token_layout is None
        and decoded.datasets["waves"].token_grid is None
    )


def test_pretraining_takes_the_tokenizer_from_the_token_manifest(encoded, tmp_path):
    from physfm.cli import main
    from physfm.train.data import describe_tokens
    from physfm.train.pretrain import load_pretrain_config
    from tests.datagen import TINY_PRETRAIN

    _, _, ckpt, other, tokens = encoded
    overrides = [
        *TINY_PRETRAIN,
        f"data.tokens=[{tokens}]",
        "model.vocab_size=16",
        "model.fsq_levels=[4,4]",
        f"out={tmp_path / 'run'}",
    ]
    info = describe_tokens(load_pretrain_config("configs/pretrain/tiny.yaml", overrides))
    assert info["tokenizer"] == str(ckpt) and (info["n_context"], info["n_frames"]) == (2, 3)
    same = describe_tokens(
        load_pretrain_config("configs/pretrain/tiny.yaml", [*overrides, f"tokenizer={ckpt}"])
    )
    assert same["tokenizer"] == str(ckpt)
    wrong = load_pretrain_config("configs/pretrain/tiny.yaml", [*overrides, f"tokenizer={other}"])
    with pytest.raises(
        ConfigError, match=r"tokenizer: .* is tokenizer \w+, but data.tokens .* were encoded by"
    ):
        describe_tokens(wrong)
    args = ["pretrain", "--config", "configs/pretrain/tiny.yaml", *overrides, f"tokenizer={other}"]
    assert main(args) == 2
