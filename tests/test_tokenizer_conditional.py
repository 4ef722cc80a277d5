"""Conditional (predictive) tokens: key frame + frames coded given the previous frame
(model.conditional)."""

import json

import pytest
import torch

from data_pipelines.config import ConfigError, load_config
from data_pipelines.shards import iter_samples, read_manifest
from tests.tokenizer_fixtures import write_wave_shards
from tokenizer.checkpoint import fingerprint, load_tokenizer, save_tokenizer
from tokenizer.encode import decode_shards, encode_shards
from tokenizer.evaluate import evaluate_tokenizer
from tokenizer.model import DatasetSpec, Tokenizer, TokenizerConfig
from tokenizer.training import TokenizerTrainConfig, train_tokenizer

SHAPES = {1: (32,), 2: (16, 16)}


def conditional(n_dims: int = 2, **kw) -> Tokenizer:
    """A conditional tokenizer with non-trivial random weights (the zero-initialised convs would
    hide bugs)."""
    torch.manual_seed(0)
    cfg = TokenizerConfig(
        n_spatial_dims=n_dims, width=8, max_width=16, temporal_kernel=1, conditional=True, **kw
    )
    tok = Tokenizer(cfg, {"a": DatasetSpec(["u", "v"])})
    with torch.no_grad():
        for p in tok.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return tok.eval()


# token-resolution trunk (tiny) and two strided levels
@pytest.mark.parametrize("patch_size", [4, 1])
def test_all_no_change_frame_decodes_to_the_previous_frame_exactly(patch_size):
    tok = conditional(patch_size=patch_size)
    assert tok.no_change_id == 4 + 8 * (2 + 5 * (2 + 5 * 2))  # digits [4, 2, 2, 2] of [8, 5, 5, 5]
    assert torch.equal(tok.fsq.indices_to_codes(torch.tensor(tok.no_change_id)), torch.zeros(4))
    prev = torch.randn(3, 2, 16, 16)
    same = torch.full((3, 4, 4), tok.no_change_id)
    assert torch.equal(tok.decode_step(same, prev, "a"), prev)
    frames = tok.decode(torch.full((3, 4, 4, 4), tok.no_change_id), "a", prev=prev)
    assert frames.shape == (3, 4, 2, 16, 16) and all(
        torch.equal(frames[:, t], prev) for t in range(4)
    )
    # One changed token changes the frame, locally and not to the key-frame output.
    one = same.clone()
    one[:, 1, 2] = 0
    assert not torch.equal(tok.decode_step(one, prev, "a"), prev)


@pytest.mark.parametrize("n_dims", [1, 2])
def test_encode_decode_shapes(n_dims):
    tok = conditional(n_dims)
    x = torch.randn(2, 5, 2, *SHAPES[n_dims])
    ids = tok.encode(x, "a")
    grid = tuple(s // 4 for s in SHAPES[n_dims])
    assert (
        ids.shape == (2, 5, *grid)
        and ids.dtype == torch.int64
        and ids.min() >= 0
        and ids.max() < 1000
    )
    assert tok.token_grid(5, SHAPES[n_dims]) == (5, *grid)
    assert tok.decode(ids, "a").shape == x.shape
    assert tok.decode(ids, "a", n_frames=3).shape == (2, 3, 2, *SHAPES[n_dims])
    assert tok.decode(ids[:, 1:], "a", prev=x[:, 0]).shape == (2, 4, 2, *SHAPES[n_dims])
    assert tok.decode_step(ids[:, 0], None, "a").shape == x[:, 0].shape
    recon, ids2 = tok(x, "a")
    assert recon.shape == x.shape and torch.equal(ids, ids2)
    with pytest.raises(ValueError, match="prev must be"):
        tok.decode_step(ids[:, 1], x[:, 0, :1], "a")


def test_open_loop_encode_and_closed_loop_decode_agree_given_the_true_previous_frame():
    tok = conditional()
    x = torch.randn(2, 4, 2, 16, 16)
    with torch.no_grad():
        recon, ids = tok(x, "a")  # teacher forced: frame t decoded given the true x_{t-1}
    assert torch.equal(tok.decode(ids[:, 1:2], "a", prev=x[:, 0])[:, 0], recon[:, 1])
    assert torch.equal(tok.decode_step(ids[:, 2], x[:, 1], "a"), recon[:, 2])
    assert torch.equal(tok.decode(ids, "a")[:, 0], recon[:, 0])  # the key frame needs no prev
    # Closed-loop coding: frame t coded given the decoded frame t-1 (what decode(ids) will condition
    # on).
    closed = tok.encode(x, "a", closed_loop=True)
    assert torch.equal(closed[:, 0], ids[:, 0]) and closed.shape == ids.shape
    frame0 = tok.decode_step(closed[:, 0], None, "a")
    not_key = torch.zeros(2, dtype=torch.bool)
    assert torch.equal(closed[:, 1], tok._encode_frames(x[:, 1], frame0, not_key, "a")[1])
    assert torch.equal(tok.decode(closed, "a")[:, 1], tok.decode_step(closed[:, 1], frame0, "a"))
    # Frames are coded causally: a later frame does not change earlier tokens.
    later = x.clone()
    later[:, 3] += 5
    assert torch.equal(tok.encode(later, "a")[:, :3], ids[:, :3])


def test_plain_tokenizer_is_unchanged():
    """Same seed → same weights and reconstruction as on the base commit (145136a, before
    model.conditional)."""
    torch.manual_seed(0)
    tok = Tokenizer(
        TokenizerConfig(n_spatial_dims=2, patch_size=4, norm="none"), {"a": DatasetSpec(["u", "v"])}
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, 16, 16, generator=g)
    with torch.no_grad():
        weight_sum = sum(float(p.double().sum()) for p in tok.parameters())
        for p in tok.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        recon, ids = tok(x, "a")
    assert len(tok.state_dict()) == 32
    assert weight_sum == pytest.approx(5.459951024956354, abs=1e-9)
    # float32 convolutions reduce in a thread-count-dependent order: equal to ~1e-7 relative, not
    # bit for bit
    assert float(recon.double().sum()) == pytest.approx(-61.26264055352658, rel=1e-5)
    assert float(recon.double().abs().sum()) == pytest.approx(600.7066645184532, rel=1e-5)
    assert int(ids.sum()) == 37305
    with pytest.raises(ValueError, match="plain"):
        tok.decode(ids, "a", prev=x[:, 0])


def test_save_load_keeps_conditional_and_plain_identity_is_unchanged(tmp_path):
    tok = conditional()
    save_tokenizer(tok, tmp_path / "cond")
    back = load_tokenizer(tmp_path / "cond")
    assert (
        back.cfg.conditional
        and json.loads((tmp_path / "cond" / "tokenizer.json").read_text())["model"]["conditional"]
    )
    x = torch.randn(1, 3, 2, 16, 16)
    assert torch.equal(back.encode(x, "a"), tok.encode(x, "a"))
    assert fingerprint(back) == fingerprint(tmp_path / "cond")
    torch.manual_seed(0)
    plain = Tokenizer(TokenizerConfig(n_spatial_dims=2), {"a": DatasetSpec(["u"])})
    save_tokenizer(plain, tmp_path / "plain")
    meta = json.loads((tmp_path / "plain" / "tokenizer.json").read_text())
    # so a plain file and fingerprint match one written without the option
    assert "conditional" not in meta["model"]
    assert not load_tokenizer(tmp_path / "plain").cfg.conditional
    assert fingerprint(plain) == fingerprint(tmp_path / "plain") == meta["fingerprint"]


def test_conditional_refuses_temporal_compression_and_kernel_and_one_frame_crops():
    with pytest.raises(ConfigError, match="model.conditional"):
        TokenizerConfig(temporal_compression=2, temporal_kernel=1, conditional=True).validate()
    with pytest.raises(ConfigError, match="model.temporal_kernel"):
        TokenizerConfig(temporal_kernel=3, conditional=True).validate()
    with pytest.raises(ConfigError, match="model.conditional"):
        load_config(
            TokenizerTrainConfig,
            "configs/tokenizer/tiny_conditional.yaml",
            ["model.temporal_compression=2"],
        )
    with pytest.raises(ConfigError, match="data.train_frames"):
        load_config(
            TokenizerTrainConfig, "configs/tokenizer/tiny_conditional.yaml", ["data.train_frames=1"]
        )
    cfg = load_config(TokenizerTrainConfig, "configs/tokenizer/tiny_conditional.yaml")
    assert cfg.model.conditional and cfg.model.levels == [8, 5, 5, 5] and cfg.data.train_frames == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("condtok")
    shards = write_wave_shards(root / "shards", {"waves": (["u", "v"], (16, 16))}, n_train=16)
    overrides = [
        f"data.shards={shards}",
        f"out={root / 'run'}",
        "data.batch_size=4",
        "trainer.wandb=false",
        "trainer.verbose=false",
        "trainer.log_every=1",
        "data.val_batches=0",
        "trainer.max_steps=60",
        "trainer.num_threads=1",
    ]
    cfg = load_config(TokenizerTrainConfig, "configs/tokenizer/tiny_conditional.yaml", overrides)
    return root, shards, train_tokenizer(cfg)


@pytest.mark.slow
def test_short_training_run_loss_falls(trained):
    import csv

    root, _, ckpt = trained
    rows = list(csv.DictReader((root / "run" / "logs" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 40
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:5]) / 5
    assert load_tokenizer(ckpt).cfg.conditional


@pytest.mark.slow
def test_token_shards_record_conditional_and_decode(trained, tmp_path):
    root, shards, ckpt = trained
    tokens = encode_shards(ckpt, shards, tmp_path / "tokens", batch_size=3)
    manifest = read_manifest(tokens)
    tok = load_tokenizer(ckpt)
    assert manifest["tokenizer"]["conditional"] is True
    assert manifest["tokenizer"]["no_change_id"] == tok.no_change_id
    assert manifest["tokenizer_fingerprint"] == fingerprint(ckpt)
    sample = next(iter_samples(tokens, "valid"))
    assert sample["tokens"].shape == (5, 4, 4)
    window = torch.from_numpy(next(iter_samples(shards, "valid"))["input"]).float()[None]
    assert torch.equal(
        torch.from_numpy(sample["tokens"][:4]).long()[None],
        tok.encode(tok.normalize(window, "waves"), "waves"),
    )
    decoded = decode_shards(ckpt, tokens, tmp_path / "decoded")
    assert read_manifest(decoded)["n_input"] == 4
    assert manifest["tokenizer"]["closed_loop"] is False
    closed = encode_shards(ckpt, shards, tmp_path / "closed", splits=["valid"], closed_loop=True)
    assert read_manifest(closed)["tokenizer"]["closed_loop"] is True


@pytest.mark.slow
def test_eval_reports_conditional_ceiling_persistence_and_key_frames(trained, tmp_path):
    _, shards, ckpt = trained
    metrics = evaluate_tokenizer(ckpt, shards, tmp_path, n_plots=0)
    assert metrics["conditional"] is True
    f = metrics["datasets"]["waves"]["fields"]["u"]
    for k in (
        "vrmse",
        "conditional_vrmse",
        "persistence_vrmse",
        "key_vrmse",
        "closed_loop_vrmse",
        "closed_loop_encoded_vrmse",
    ):
        assert f[k] > 0
    assert metrics["overall"]["conditional_vrmse_max"] >= f["conditional_vrmse"]
    assert "given true prev" in (tmp_path / "report.md").read_text()
