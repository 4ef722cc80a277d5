"""Train → checkpoint → eval → token shards → decode, through the library and the CLI, on tiny wave
shards."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from data_pipelines.config import load_config
from data_pipelines.errors import DataError
from data_pipelines.shards import iter_samples, read_manifest
from physfm.cli import main as physfm
from tests.tokenizer_fixtures import write_wave_shards
from tokenizer.checkpoint import fingerprint, load_tokenizer, save_tokenizer
from tokenizer.encode import decode_shards, encode_shards, read_token_shards
from tokenizer.training import TokenizerTrainConfig, train_tokenizer

TINY = [
    "model.width=8",
    "model.max_width=16",
    "data.batch_size=4",
    "trainer.wandb=false",
    "trainer.verbose=false",
    "data.val_batches=1",
    "trainer.max_steps=4",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    shards = write_wave_shards(
        root / "shards", {"waves": (["u", "v"], (16, 16)), "big": (["p"], (32, 32))}
    )
    cfg = load_config(
        TokenizerTrainConfig,
        "configs/tokenizer/tiny.yaml",
        [f"data.shards={shards}", f"out={root / 'run'}", *TINY],
    )
    ckpt = train_tokenizer(cfg)
    return root, shards, ckpt


@pytest.mark.slow
def test_training_writes_a_safetensors_checkpoint_that_reloads(trained):
    root, shards, ckpt = trained
    assert (ckpt / "tokenizer.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    assert (root / "run" / "config.yaml").is_file() and (
        root / "run" / "logs" / "metrics.csv"
    ).is_file()
    meta = json.loads((ckpt / "tokenizer.json").read_text())
    assert meta["train"]["step"] == 4 and set(meta["datasets"]) == {"waves", "big"}
    tok = load_tokenizer(root / "run")  # a run directory resolves to its checkpoint
    manifest = read_manifest(shards)
    assert tok.datasets["waves"].mean == pytest.approx(
        manifest["datasets"]["waves"]["stats"]["mean"]
    )
    assert fingerprint(tok) == fingerprint(ckpt) == meta["fingerprint"]


@pytest.mark.slow
def test_eval_writes_metrics_report_and_pngs(trained, tmp_path):
    root, shards, ckpt = trained
    assert (
        physfm(
            [
                "tokenizer",
                "eval",
                "--ckpt",
                str(ckpt),
                "--data",
                str(shards),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"waves", "big"}
    fields = metrics["datasets"]["waves"]["fields"]
    assert set(fields) == {"u", "v"} and all(
        f["vrmse"] > 0 and np.isfinite(f["psnr"]) for f in fields.values()
    )
    assert 0 < metrics["overall"]["code_usage"] <= 1 and metrics["overall"]["perplexity"] >= 1
    assert metrics["token_grid"]["big"] == [5, 8, 8]
    assert "| waves | u |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "recon_waves_0.png").stat().st_size > 1000


@pytest.mark.slow
def test_token_shards_round_trip_and_mismatched_tokenizer_is_refused(trained, tmp_path):
    root, shards, ckpt = trained
    # batches straddle datasets
    tokens = encode_shards(ckpt, shards, tmp_path / "tokens", batch_size=3)
    manifest = read_manifest(tokens)
    assert manifest["tokenizer_fingerprint"] == fingerprint(ckpt)
    assert (
        manifest["splits"]["valid"]["n_samples"]
        == read_manifest(shards)["splits"]["valid"]["n_samples"]
    )
    tok = load_tokenizer(ckpt)
    fields = {s["__key__"]: s for s in iter_samples(shards, "valid")}
    token_samples = list(read_token_shards(tokens, ckpt, "valid"))
    assert [s["__key__"] for s in token_samples] == list(fields)  # same windows, same order
    for s in token_samples:
        src = fields[s["__key__"]]
        window = torch.from_numpy(np.concatenate([src["input"], src["output"]]))[None]
        name = src["meta"]["dataset"]
        assert s["tokens"].dtype == np.int32
        assert s["meta"]["dataset"] == name and s["meta"]["trajectory"] == src["meta"]["trajectory"]
        assert np.array_equal(s["tokens"], tok.encode(tok.normalize(window, name), name)[0].numpy())

    decoded = decode_shards(ckpt, tokens, tmp_path / "decoded")
    for s in iter_samples(decoded, "valid"):
        tokens_of = next(t for t in token_samples if t["__key__"] == s["__key__"])
        name = s["meta"]["dataset"]
        expect = tok.denormalize(
            tok.decode(torch.from_numpy(tokens_of["tokens"]).long()[None], name, 5), name
        )[0]
        assert s["input"].shape == fields[s["__key__"]]["input"].shape
        assert np.allclose(np.concatenate([s["input"], s["output"]]), expect.numpy(), atol=1e-5)

    # Any change to the tokenizer changes its fingerprint: its use on these tokens is refused.
    with torch.no_grad():
        tok.to_code.bias.add_(1e-3)
    other = save_tokenizer(tok, tmp_path / "other")
    with pytest.raises(
        DataError, match="encoded by tokenizer .* decode with the tokenizer that encoded them"
    ):
        decode_shards(other, tokens, tmp_path / "decoded2")
    with pytest.raises(DataError, match="encoded by tokenizer"):
        next(read_token_shards(tokens, other, "train"))
    assert (
        physfm(
            [
                "tokenizer",
                "decode",
                "--ckpt",
                str(other),
                "--tokens",
                str(tokens),
                "--out",
                str(tmp_path / "d3"),
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_extending_to_a_new_dataset_keeps_old_tokens(trained, tmp_path):
    root, shards, ckpt = trained
    new_shards = write_wave_shards(
        tmp_path / "new",
        {"waves": (["u", "v"], (16, 16)), "heat": (["T", "rho"], (16, 16))},
        seed=5,
    )
    cfg = load_config(
        TokenizerTrainConfig,
        "configs/tokenizer/tiny.yaml",
        [
            f"data.shards={new_shards}",
            f"out={tmp_path / 'run2'}",
            *TINY,
            f"init.from_ckpt={ckpt}",
            "init.freeze_trunk=true",
            "init.freeze_known_datasets=true",
            "data.dataset_weights={heat: 1.0}",
            "model.mid_blocks=5",  # ignored: the checkpoint's architecture is the one trained
        ],
    )
    extended_dir = train_tokenizer(cfg)
    extended = load_tokenizer(extended_dir)
    original = load_tokenizer(ckpt)
    recorded = json.loads((extended_dir / "tokenizer.json").read_text())["train"]["config"]
    assert recorded["model"] == dataclasses.asdict(original.cfg)
    assert set(extended.datasets) == {"waves", "big", "heat"}
    window = torch.randn(2, 5, 2, 16, 16)
    assert torch.equal(extended.encode(window, "waves"), original.encode(window, "waves"))
    assert torch.equal(
        extended.decode(original.encode(window, "waves"), "waves"),
        original.decode(original.encode(window, "waves"), "waves"),
    )
    assert all(
        torch.equal(a, b) for a, b in zip(extended.trunk_parameters(), original.trunk_parameters())
    )


@pytest.mark.slow
def test_cli_train_and_encode(tmp_path, trained):
    root, shards, ckpt = trained
    rc = physfm(
        [
            "tokenizer",
            "train",
            "--config",
            "configs/tokenizer/tiny.yaml",
            "--out",
            str(tmp_path / "run"),
            f"data.shards={shards}",
            *TINY,
            "trainer.max_steps=2",
        ]
    )
    assert rc == 0 and (tmp_path / "run" / "checkpoint" / "tokenizer.safetensors").is_file()
    rc = physfm(
        [
            "tokenizer",
            "encode",
            "--ckpt",
            str(tmp_path / "run"),
            "--data",
            str(shards),
            "--out",
            str(tmp_path / "tokens"),
            "--split",
            "valid",
        ]
    )
    assert rc == 0 and list(read_manifest(tmp_path / "tokens")["splits"]) == ["valid"]
    assert (
        physfm(
            ["tokenizer", "train", "--config", "configs/tokenizer/tiny.yaml", "model.levelz=[2]"]
        )
        == 2
    )


@pytest.mark.slow
def test_one_clip_shard_set_serves_a_short_tokenizer_window_and_long_token_windows(tmp_path):
    from data_pipelines.sharding import WindowSpec, shard_datasets
    from tests.datagen import make_toy_dataset

    toy = make_toy_dataset(tmp_path / "toy", n_files=1, n_traj=2, n_steps=12)
    shards = tmp_path / "shards"
    shard_datasets([toy], shards, WindowSpec(4, 1, 1))
    overrides = [f"data.shards={shards}", f"out={tmp_path / 'run'}", *TINY, "data.window=[2,1]"]
    ckpt = train_tokenizer(
        load_config(TokenizerTrainConfig, "configs/tokenizer/tiny.yaml", overrides)
    )
    tokens = encode_shards(
        ckpt, shards, tmp_path / "tokens", splits=["valid"], window=WindowSpec(8, 1, 1)
    )
    manifest = read_manifest(tokens)
    assert (manifest["n_input"], manifest["n_output"]) == (8, 1)
    samples = list(iter_samples(tokens, "valid"))
    # 12 steps: starts 0..3
    assert len(samples) == manifest["splits"]["valid"]["n_samples"] == 2 * 4
    assert {s["tokens"].shape[0] for s in samples} == {9}
