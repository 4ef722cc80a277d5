"""VRMSE equals The Well's; PSNR, code usage and perplexity behave as defined."""

import pytest
import torch

from tokenizer.metrics import CodeStats, code_counts, code_usage, perplexity, psnr, vrmse


def _well_meta(n_dims: int, shape, n_fields: int):
    from the_well.data.datasets import WellMetadata

    return WellMetadata(
        dataset_name="t",
        n_spatial_dims=n_dims,
        spatial_resolution=tuple(shape),
        scalar_names=[],
        constant_scalar_names=[],
        field_names={0: [f"f{i}" for i in range(n_fields)]},
        constant_field_names={},
        boundary_condition_types=["PERIODIC"],
        n_files=1,
        n_trajectories_per_file=[1],
        n_steps_per_trajectory=[5],
    )


@pytest.mark.parametrize("n_dims,shape", [(1, (33,)), (2, (12, 10)), (3, (6, 5, 4))])
def test_vrmse_equals_the_well_vrmse(n_dims, shape):
    from the_well.benchmark.metrics import VRMSE

    torch.manual_seed(n_dims)
    true = torch.randn(3, 4, 2, *shape, dtype=torch.float64) * 2 + 1  # ours: [B, T, C, *space]
    pred = true + 0.3 * torch.randn_like(true)
    true[0, 0, 1] = 0.5  # a constant field: the eps term decides
    ours = vrmse(pred, true, n_dims)
    assert ours.shape == (3, 4, 2)
    # The Well's layout is channels-last [B, T, *space, C].
    theirs = VRMSE()(pred.movedim(2, -1), true.movedim(2, -1), _well_meta(n_dims, shape, 2))
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)
    # Our channel_axis argument accepts their layout directly.
    ours_cl = vrmse(pred.movedim(2, -1), true.movedim(2, -1), n_dims, channel_axis=-1)
    assert torch.allclose(ours_cl, theirs, rtol=1e-12, atol=0)


def test_vrmse_is_one_for_the_spatial_mean_and_zero_for_the_truth():
    torch.manual_seed(0)
    true = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    mean = true.mean(dim=(-2, -1), keepdim=True).expand_as(true)
    n = 64 * 64
    assert torch.allclose(
        vrmse(mean, true, 2),
        torch.full((2, 3), ((n - 1) / n) ** 0.5, dtype=torch.float64),
        atol=1e-6,
    )
    assert torch.all(vrmse(true, true, 2) == 0)


def test_psnr_grows_as_error_shrinks():
    torch.manual_seed(0)
    true = torch.rand(4, 1, 32, 32)
    noisy, cleaner = true + 0.1 * torch.randn_like(true), true + 0.01 * torch.randn_like(true)
    gain = psnr(cleaner, true, 2) - psnr(noisy, true, 2)
    assert torch.allclose(gain, torch.full_like(gain, 20.0), atol=1.0)  # 10x less noise = +20 dB


def test_code_usage_and_perplexity():
    uniform = code_counts(torch.arange(100).repeat(3), 100)
    assert code_usage(uniform) == 1.0 and perplexity(uniform) == pytest.approx(100.0)
    one_code = code_counts(torch.zeros(50, dtype=torch.long), 100)
    assert code_usage(one_code) == 0.01 and perplexity(one_code) == pytest.approx(1.0)
    stats = CodeStats(10)
    stats.update(torch.tensor([[0, 1], [2, 3]]))
    stats.update(torch.tensor([4]))
    assert stats.summary()["code_usage"] == 0.5 and stats.summary()["n_tokens"] == 5
    with pytest.raises(ValueError, match="outside"):
        code_counts(torch.tensor([10]), 10)


def test_vmse_loss_is_mean_squared_vrmse_with_eps_and_weights_fields_equally():
    from tokenizer.training import LossConfig, reconstruction_loss

    torch.manual_seed(0)
    true = torch.randn(2, 3, 2, 16, 16, dtype=torch.float64)
    true[:, :, 1] *= 10  # field 1 has 100x the variance of field 0
    # same relative error
    pred = true + 0.1 * true.std(dim=(-2, -1), keepdim=True) * torch.randn_like(true)
    cfg = LossConfig(kind="vmse", vmse_eps=0.0)
    # With eps 0 the loss is the mean of VRMSE² (VRMSE's own eps aside).
    assert torch.isclose(
        reconstruction_loss(pred, true, cfg, 2), (vrmse(pred, true, 2) ** 2).mean(), rtol=1e-4
    )
    # Equal relative errors give equal per-field losses under vmse, but not under plain mse.
    per_field = [
        reconstruction_loss(pred[:, :, c : c + 1], true[:, :, c : c + 1], cfg, 2) for c in (0, 1)
    ]
    assert torch.isclose(per_field[0], per_field[1], rtol=0.1)
    mse = [
        reconstruction_loss(pred[:, :, c : c + 1], true[:, :, c : c + 1], LossConfig(kind="mse"), 2)
        for c in (0, 1)
    ]
    assert mse[1] > 50 * mse[0]
    # eps keeps a near-constant frame from dominating: the loss stays bounded.
    flat = torch.full_like(true, 3.0)
    noisy = flat + 1e-3 * torch.randn_like(flat)
    assert reconstruction_loss(noisy, flat, LossConfig(kind="vmse"), 2) < 1e-3


def test_eval_max_batches_caps_each_dataset_so_every_dataset_is_scored(tmp_path):
    """The loader yields one dataset's windows after the other's: a cap on the total scored the
    first dataset only, and the headline vrmse_max (the quickstart's) left the others out."""
    from data_pipelines.shards import read_manifest
    from tests.rollout_fixtures import build_tiny_model
    from tokenizer.evaluate import evaluate_tokenizer

    paths = build_tiny_model(tmp_path, datasets=("waves_a", "waves_b"))
    assert len(read_manifest(paths["shards"])["datasets"]) == 2
    metrics = evaluate_tokenizer(
        paths["tokenizer"],
        paths["shards"],
        tmp_path / "eval",
        split="valid",
        batch_size=2,
        max_batches=1,
        n_plots=0,
    )
    assert sorted(metrics["datasets"]) == ["waves_a", "waves_b"]
    # one batch of 2 five-frame windows
    assert all(d["n_frames"] <= 2 * 5 for d in metrics["datasets"].values())
    worst = max(f["vrmse"] for d in metrics["datasets"].values() for f in d["fields"].values())
    assert metrics["overall"]["vrmse_max"] == worst
