"""Tokenizer model: 1D/2D/3D shapes, causality in time, per-dataset heads and frozen-trunk
extension."""

import pytest
import torch

from data_pipelines.config import ConfigError, load_config
from tokenizer.model import DatasetSpec, Tokenizer, TokenizerConfig
from tokenizer.training import TokenizerTrainConfig


def small(n_dims=2, **kw) -> TokenizerConfig:
    kw.setdefault("patch_size", 1)  # two strided levels at 4x: room for 4x temporal compression
    return TokenizerConfig(n_spatial_dims=n_dims, width=8, max_width=16, **kw)


SHAPES = {1: (32,), 2: (16, 16), 3: (8, 8, 8)}


@pytest.mark.parametrize("n_dims", [1, 2, 3])
@pytest.mark.parametrize("ct", [1, 2, 4])
def test_round_trip_shapes_1d_2d_3d(n_dims, ct):
    torch.manual_seed(0)
    tok = Tokenizer(
        small(n_dims, temporal_compression=ct, spatial_compression=4),
        {"a": DatasetSpec(["u", "v", "w"])},
    )
    x = torch.randn(2, 5, 3, *SHAPES[n_dims])
    recon, ids = tok(x, "a")
    assert recon.shape == x.shape
    grid = tok.token_grid(5, SHAPES[n_dims])
    assert ids.shape == (2, *grid) and grid[0] == 1 + 4 // ct
    assert tuple(grid[1:]) == tuple(s // 4 for s in SHAPES[n_dims])
    assert ids.dtype == torch.int64 and ids.min() >= 0 and ids.max() < 1000
    decoded = tok.decode(ids, "a", n_frames=5)
    assert torch.allclose(decoded, recon, atol=1e-5)  # decode(encode(x)) is the forward pass


def test_window_length_not_aligned_with_temporal_compression():
    tok = Tokenizer(small(temporal_compression=4), {"a": DatasetSpec(["u"])})
    x = torch.randn(1, 4, 1, 16, 16)  # 1 + 3: padded to 1 + 4 internally, cropped on decode
    recon, ids = tok(x, "a")
    assert ids.shape == (1, 2, 4, 4) and recon.shape == x.shape


@pytest.mark.parametrize(
    "ct,frame,unchanged_groups", [(1, 4, 4), (1, 2, 2), (2, 3, 2), (4, 4, 1), (2, 1, 1)]
)
def test_codes_of_earlier_frames_ignore_later_frames(ct, frame, unchanged_groups):
    torch.manual_seed(1)
    tok = Tokenizer(small(temporal_compression=ct), {"a": DatasetSpec(["u", "v"])})
    x = torch.randn(2, 5, 2, 16, 16)
    later = x.clone()
    later[:, frame] = 10 * torch.randn_like(later[:, frame])
    codes, ids = tok.encode_latent(x, "a")
    codes2, ids2 = tok.encode_latent(later, "a")
    assert torch.equal(ids[:, :unchanged_groups], ids2[:, :unchanged_groups])
    assert torch.equal(codes[:, :unchanged_groups], codes2[:, :unchanged_groups])
    # the perturbation is seen
    assert not torch.equal(ids[:, unchanged_groups:], ids2[:, unchanged_groups:])
    # The decoder is causal too: frames before the perturbed group decode identically.
    first_frame_of_group = 1 + ct * (unchanged_groups - 1)
    out, out2 = tok.decode(ids, "a", 5), tok.decode(ids2, "a", 5)
    assert torch.equal(out[:, :first_frame_of_group], out2[:, :first_frame_of_group])


def test_bad_inputs_are_named():
    tok = Tokenizer(small(), {"gray_scott": DatasetSpec(["A", "B"])})
    with pytest.raises(KeyError, match="'ns'.*known: gray_scott"):
        tok.encode(torch.randn(1, 5, 2, 16, 16), "ns")
    with pytest.raises(ValueError, match="expected 2 channels"):
        tok.encode(torch.randn(1, 5, 3, 16, 16), "gray_scott")
    with pytest.raises(ValueError, match="not divisible"):
        tok.encode(torch.randn(1, 5, 2, 18, 16), "gray_scott")
    with pytest.raises(ValueError, match="already registered"):
        tok.add_dataset("gray_scott", ["A"])


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.spatial_compression"):
        load_config(TokenizerTrainConfig, None, ["model.spatial_compression=6"])
    with pytest.raises(ConfigError, match="model.temporal_compression"):
        Tokenizer(TokenizerConfig(spatial_compression=4, patch_size=2, temporal_compression=4))
    with pytest.raises(ConfigError, match="model.levels"):
        load_config(TokenizerTrainConfig, None, ["model.levels=[8,1]"])
    with pytest.raises(ConfigError, match="unknown config key model.widht"):
        load_config(TokenizerTrainConfig, None, ["model.widht=3"])
    cfg = load_config(TokenizerTrainConfig, "configs/tokenizer/large.yaml", ["data.shards=x"])
    assert cfg.model.levels == [8, 8, 8, 5, 5, 5] and cfg.model.codebook_size == 64000
    assert cfg.model.temporal_compression == 4 and cfg.model.spatial_compression == 8


@pytest.mark.slow
def test_new_dataset_trains_its_head_with_frozen_trunk_and_old_dataset_is_unchanged():
    torch.manual_seed(0)
    tok = Tokenizer(small(), {"old": DatasetSpec(["u", "v"])})
    x_old = torch.randn(2, 5, 2, 16, 16)
    before_out, before_ids = tok(x_old, "old")
    trunk_before = [p.detach().clone() for p in tok.trunk_parameters()]

    tok.add_dataset("new", ["p", "q", "r"])
    tok.freeze_trunk()
    tok.freeze_datasets(["old"])
    trainable = [p for p in tok.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in tok.dataset_parameters("new")}
    opt = torch.optim.Adam(trainable, lr=1e-2)
    grid = torch.linspace(0, 6.28, 16)
    x_new = (
        torch.sin(
            grid[None, None, None, :, None]
            + grid[None, None, None, None, :]
            + torch.arange(5.0)[None, :, None, None, None] * 0.3
        )
        .expand(2, 5, 3, 16, 16)
        .contiguous()
    )
    losses = []
    for _ in range(25):
        recon, _ = tok(x_new, "new")
        loss = ((recon - x_new) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # the new head learns through the frozen trunk
    assert all(torch.equal(a, b) for a, b in zip(trunk_before, tok.trunk_parameters()))
    after_out, after_ids = tok(x_old, "old")
    assert torch.equal(after_ids, before_ids) and torch.equal(after_out, before_out)


def test_pooling_baselines_match_the_latent_size():
    from tokenizer.evaluate import pool_baseline, pool_shape_latent, pool_shape_tokens

    # 2D, 3 fields, 64², 4x per axis, 4 FSQ values per token position: 16*16*4 floats per frame
    # shared by 3 fields, i.e. about 18² per field; the token-grid baseline keeps 16² per field.
    tok = Tokenizer(
        small(2, spatial_compression=4, levels=[8, 5, 5, 5]), {"a": DatasetSpec(["u", "v", "w"])}
    )
    assert pool_shape_tokens(tok, (64, 64)) == [16, 16]
    latent = pool_shape_latent(tok, 5, 3, (64, 64))
    assert latent == [18, 18] and abs(3 * 18 * 18 - 16 * 16 * 4) / (16 * 16 * 4) < 0.06
    # One 1D field at 4x with 4 values per position: as many floats as the input, so the pooling is
    # lossless.
    tok1 = Tokenizer(
        small(1, spatial_compression=4, levels=[8, 5, 5, 5]), {"b": DatasetSpec(["u"])}
    )
    assert pool_shape_latent(tok1, 5, 1, (128,)) == [128]
    x = torch.randn(2, 5, 1, 128)
    assert torch.allclose(pool_baseline(x, [128]), x, atol=1e-6)
    # Pooling keeps each frame's mean and a constant field exactly.
    y = torch.randn(2, 5, 3, 64, 64)
    y[:, :, 1] = 2.5
    pooled = pool_baseline(y, latent)
    assert torch.allclose(pooled[:, :, 1], y[:, :, 1])
    assert pooled.shape == y.shape
