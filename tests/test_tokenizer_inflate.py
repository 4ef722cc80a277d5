"""tokenizer/inflate.py: an inflated tokenizer codes a field constant along the new axes exactly as
the original codes its slice (2D → 3D, 1D → 2D), its state has the new dimensionality, and the
checkpoint helper writes a loadable checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from data_pipelines.config import ConfigError
from tokenizer.checkpoint import CONFIG, fingerprint, load_tokenizer, save_tokenizer
from tokenizer.inflate import inflate_checkpoint, inflate_tokenizer
from tokenizer.model import DatasetSpec, Tokenizer, TokenizerConfig

DATASETS = {"a": DatasetSpec(["u", "v"], [0.5, -1.0], [2.0, 0.5])}


def random_tokenizer(n_dims: int, seed: int = 0, **overrides) -> Tokenizer:
    """A float64 tokenizer with every weight random (the default init zeroes each residual block's
    last conv, which would hide a wrong inflation of it); one strided level (patch 2, 4x)."""
    torch.manual_seed(seed)
    sizes = dict(levels=[4, 4, 3], spatial_compression=4, patch_size=2, width=8, max_width=16)
    cfg = TokenizerConfig(n_spatial_dims=n_dims, **{**sizes, "temporal_kernel": 2, **overrides})
    tok = Tokenizer(cfg, DATASETS)
    with torch.no_grad():
        for p in tok.parameters():
            p.normal_(0.0, 0.3)
    return tok.double().eval()


def constant_along_new_axes(x: torch.Tensor, n_new: int, size: int) -> torch.Tensor:
    for _ in range(n_new):
        x = x[..., None].expand(*x.shape, size)
    return x.contiguous()


@pytest.mark.parametrize("n_dims", [2, 1])
def test_inflated_tokenizer_reproduces_a_field_constant_along_the_new_axis(n_dims):
    tok = random_tokenizer(n_dims)
    big = inflate_tokenizer(tok, n_dims + 1)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 2, *[16] * n_dims, dtype=torch.float64)  # [B, T, C, *space]
    recon, ids = tok(x, "a")
    recon_big, ids_big = big(constant_along_new_axes(x, 1, 8), "a")
    assert ids_big.shape == (*ids.shape, 2) and recon_big.shape == (*recon.shape, 8)
    for k in range(ids_big.shape[-1]):  # every token slice along the new axis
        assert torch.equal(ids_big[..., k], ids)
    for k in range(recon_big.shape[-1]):  # every field slice
        torch.testing.assert_close(recon_big[..., k], recon, rtol=1e-9, atol=1e-9)
    # and a 1D tokenizer inflated straight to 3D
    if n_dims == 1:
        cube = inflate_tokenizer(tok, 3)
        recon3, ids3 = cube(constant_along_new_axes(x, 2, 4), "a")
        assert torch.equal(ids3, ids[..., None, None].expand_as(ids3))
        torch.testing.assert_close(recon3, recon[..., None, None].expand_as(recon3))


def test_conditional_replicate_padded_tokenizer_inflates_exactly():
    tok = random_tokenizer(2, padding="replicate", conditional=True, temporal_kernel=1)
    big = inflate_tokenizer(tok, 3)
    torch.manual_seed(2)
    x = torch.randn(1, 3, 2, 8, 8, dtype=torch.float64)
    ids = tok.encode(x, "a", closed_loop=True)
    ids_big = big.encode(constant_along_new_axes(x, 1, 8), "a", closed_loop=True)
    assert torch.equal(ids_big, ids[..., None].expand_as(ids_big))
    recon, recon_big = tok.decode(ids, "a"), big.decode(ids_big, "a")
    torch.testing.assert_close(recon_big, recon[..., None].expand_as(recon_big))


def test_zero_padding_is_exact_only_away_from_the_new_axis_borders():
    """The measured border error of a zero-padded tokenizer (see tokenizer/inflate.py); without
    GroupNorm, whose per-frame statistics would carry the border error to every slice."""
    tok = random_tokenizer(2, padding="zeros", norm="none")
    big = inflate_tokenizer(tok, 3)
    torch.manual_seed(3)
    x = torch.randn(1, 2, 2, 8, 8, dtype=torch.float64)
    recon, _ = tok(x, "a")
    recon_big, _ = big(constant_along_new_axes(x, 1, 128), "a")
    err = (recon_big - recon[..., None]).abs().flatten(0, -2).amax(0)  # per depth slice
    assert err[0] > 1e-2 and err[-1] > 1e-2  # the border slices see zeros beyond the border
    assert err[60:68].max() < 1e-9  # out of the borders' receptive field (~50 cells): exact


def test_inflated_state_has_the_new_shapes_and_keeps_the_rest():
    tok = random_tokenizer(2, conditional=True, temporal_kernel=1)
    big = inflate_tokenizer(tok, 3)
    fresh = Tokenizer(TokenizerConfig(**{**tok.cfg.__dict__, "n_spatial_dims": 3}), DATASETS)
    assert big.cfg.n_spatial_dims == 3 and tok.cfg.n_spatial_dims == 2  # the source untouched
    assert {k: v.shape for k, v in big.state_dict().items()} == {
        k: v.shape for k, v in fresh.state_dict().items()
    }
    # conditional stem: (x_t, x_{t-1}, key flag) = 5 channels x 2^3 sub-positions in; head: 2 x 2^3
    # out; kernels 3x3x3
    assert big.stems["ds_a"][1].weight.shape == (8, 40, 3, 3, 3)
    assert big.heads["ds_a"][2].weight.shape == (16, 8, 3, 3, 3)
    assert big.datasets == tok.datasets and big.cfg.levels == tok.cfg.levels
    # pointwise convs are carried as they are, a 3x3 kernel is spread over 3 depth taps
    torch.testing.assert_close(big.to_code.weight[..., 0], tok.to_code.weight)
    torch.testing.assert_close(big.enc_mid[0].conv1.weight.sum(-1), tok.enc_mid[0].conv1.weight)
    with pytest.raises(ConfigError, match="model.n_spatial_dims"):
        inflate_tokenizer(tok, 2)


def test_inflate_checkpoint_writes_a_loadable_checkpoint(tmp_path):
    tok = random_tokenizer(2).float()
    src = save_tokenizer(tok, tmp_path / "tok2d")
    dst = inflate_checkpoint(src, tmp_path / "tok3d", 3)
    loaded = load_tokenizer(dst)
    assert loaded.cfg.n_spatial_dims == 3
    expected = inflate_tokenizer(tok, 3).state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    record = json.loads((dst / CONFIG).read_text())["train"]["inflated_from"]
    assert record["fingerprint"] == fingerprint(src) and record["n_spatial_dims"] == 2
    assert not list(tmp_path.glob(".*"))  # no staging directory left behind
