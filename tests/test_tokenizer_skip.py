"""Skip decisions of a conditional tokenizer (model.skip_coding): "no change" wherever it codes a
token's patch better than the encoder, and never a frame coded worse than repeating the last one."""

import json

import pytest
import torch

from data_pipelines.config import ConfigError, load_config
from data_pipelines.manifest import Manifest
from tests.test_tokenizer_conditional import conditional
from tests.tokenizer_fixtures import write_wave_shards
from tokenizer.checkpoint import fingerprint, load_tokenizer, save_tokenizer
from tokenizer.evaluate import reconstruct
from tokenizer.metrics import vrmse
from tokenizer.model import DatasetSpec, Tokenizer, TokenizerConfig
from tokenizer.training import TokenizerTrainConfig, build_tokenizer

SHAPES = {1: (32,), 2: (16, 16), 3: (8, 8, 8)}


def drifting_window(n_dims: int, n_frames: int = 4, batch: int = 3) -> torch.Tensor:
    """Smooth fields whose frames change little (sample 0), some (1) or a lot (2): [B, T, 2,
    *space]."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(batch, 1, 2, *SHAPES[n_dims], generator=g)
    steps = torch.randn(batch, n_frames, 2, *SHAPES[n_dims], generator=g).cumsum(1)
    scale = torch.tensor([0.01, 0.1, 1.0])[:batch].view(-1, 1, 1, *([1] * n_dims))
    return base + scale * steps


@pytest.mark.parametrize("n_dims", [1, 2, 3])
def test_no_frame_is_coded_worse_than_persistence_or_the_encoder(n_dims):
    plain, skip = conditional(n_dims), conditional(n_dims, skip_coding=True)
    x = drifting_window(n_dims)
    ids_plain, ids_skip = plain.encode(x, "a"), skip.encode(x, "a")
    rec_plain, ids_plain2 = plain.reconstruct(x, "a")
    rec_skip, ids_skip2 = skip.reconstruct(x, "a")
    assert torch.equal(ids_plain, ids_plain2) and torch.equal(ids_skip, ids_skip2)
    assert torch.allclose(rec_plain, plain(x, "a")[0], atol=1e-6)  # = forward without skips
    # key frames keep the encoder's codes; later frames are scored against both alternatives
    assert torch.equal(ids_skip[:, 0], ids_plain[:, 0])
    err = {
        "plain": vrmse(rec_plain[:, 1:], x[:, 1:], n_dims).mean(-1),
        "skip": vrmse(rec_skip[:, 1:], x[:, 1:], n_dims).mean(-1),
        "persistence": vrmse(x[:, :-1], x[:, 1:], n_dims).mean(-1),
    }
    assert (err["skip"] <= torch.minimum(err["plain"], err["persistence"]) + 1e-5).all()
    # The random encoder loses to persistence on the slow sample: skips are taken, and they help.
    no_change = ids_skip[:, 1:] == skip.no_change_id
    assert no_change[0].float().mean() > 0.5 and (err["skip"][0] < err["plain"][0]).all()
    # one step at a time, and given a decoded previous frame, the same decisions
    assert torch.equal(skip.encode_step(x[:, 2], x[:, 1], "a"), ids_skip[:, 2])
    # closed loop (coded given the decoded frame): never worse than repeating the decoded frame
    decoded = skip.decode(skip.encode(x, "a", closed_loop=True), "a")
    closed_err = vrmse(decoded[:, 1:], x[:, 1:], n_dims).mean(-1)
    assert (closed_err <= vrmse(decoded[:, :-1], x[:, 1:], n_dims).mean(-1) + 1e-5).all()


def test_an_unchanged_frame_is_all_no_change_and_decodes_to_the_previous_one():
    skip = conditional(skip_coding=True)
    x = drifting_window(2)
    x[:, 2] = x[:, 1]
    ids = skip.encode(x, "a")
    assert (ids[:, 2] == skip.no_change_id).all()
    assert torch.equal(skip.decode_step(ids[:, 2], x[:, 1], "a"), x[:, 1])
    # without skips the random encoder codes some change there
    assert not (conditional().encode(x, "a")[:, 2] == skip.no_change_id).all()


def test_skip_coding_needs_a_conditional_tokenizer_and_is_part_of_its_identity(tmp_path):
    with pytest.raises(ConfigError, match="model.skip_coding"):
        TokenizerConfig(skip_coding=True).validate()
    with pytest.raises(ConfigError, match="model.skip_coding"):
        load_config(TokenizerTrainConfig, "configs/tokenizer/tiny.yaml", ["model.skip_coding=true"])
    off, on = conditional(), conditional(skip_coding=True)
    on.datasets["a"].mean, on.datasets["a"].std = [0.0, 0.0], [1.0, 1.0]
    save_tokenizer(off, tmp_path / "off")
    save_tokenizer(on, tmp_path / "on")
    meta = {k: json.loads((tmp_path / k / "tokenizer.json").read_text()) for k in ("off", "on")}
    # a tokenizer without skips keeps the identity (and fingerprint) it had before the key existed
    assert "skip_coding" not in meta["off"]["model"] and meta["on"]["model"]["skip_coding"]
    assert fingerprint(tmp_path / "off") != fingerprint(tmp_path / "on")
    back = load_tokenizer(tmp_path / "on")
    x = drifting_window(2)
    assert back.cfg.skip_coding and torch.equal(back.encode(x, "a"), on.encode(x, "a"))
    # the evaluation's reconstruction is the skip-coded one
    rec, ids = reconstruct(back, x, "a")
    assert torch.equal(ids, on.encode(x, "a"))
    assert torch.allclose(rec, on.reconstruct(x, "a")[0])


def test_training_from_a_checkpoint_can_turn_skips_on_and_refuses_a_plain_one(tmp_path):
    shards = write_wave_shards(tmp_path / "shards", {"a": (["u", "v"], (16, 16))}, n_train=2)
    save_tokenizer(conditional(), tmp_path / "cond")
    plain = Tokenizer(TokenizerConfig(n_spatial_dims=2, width=8), {"a": DatasetSpec(["u", "v"])})
    save_tokenizer(plain, tmp_path / "plain")
    cfg = TokenizerTrainConfig()
    cfg.data.shards, cfg.init.from_ckpt, cfg.init.skip_coding = (
        str(shards),
        str(tmp_path / "cond"),
        True,
    )
    assert build_tokenizer(cfg, Manifest.load(shards)).cfg.skip_coding
    cfg.init.from_ckpt = str(tmp_path / "plain")
    with pytest.raises(ConfigError, match="init.skip_coding"):
        build_tokenizer(cfg, Manifest.load(shards))
