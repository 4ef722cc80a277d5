"""Steering: direction arithmetic on a planted case, the injection rule, α = 0 identity,
dose–response, physics statistics on analytic fields, and the CLI end to end on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from physfm.eval.physics_stats import (
    dominant_wavelength,
    enstrophy,
    kinetic_energy_spectrum,
    physics_statistics,
    radial_spectrum,
    spectral_slope,
)
from physfm.interp.steer import (
    Direction,
    direction_from_samples,
    load_direction,
    save_direction,
    steering,
    steering_fn,
)
from physfm.interp.steer_rollout import dose_response, infer_target, parse_alphas
from tests.steer_fixtures import GRID, N_CONTEXT


# ------------------------------------------------------------------------------------------
# direction arithmetic
@pytest.mark.parametrize("method", ["mean-diff", "pca"])
def test_planted_direction_is_recovered(method):
    g = torch.Generator().manual_seed(0)
    planted = torch.randn(*GRID, 32, generator=g)
    planted = 1.5 * planted / planted.norm()
    control = torch.randn(200, *GRID, 32, generator=g) * 0.05
    feature = torch.randn(150, *GRID, 32, generator=g) * 0.05 + planted
    delta = direction_from_samples(feature, control, method)
    cosine = float((delta * planted).sum() / (delta.norm() * planted.norm()))
    assert cosine > 0.97, cosine
    assert abs(float(delta.norm()) - 1.5) < 0.1  # the length of the shift, not just its direction
    flipped = direction_from_samples(control, feature, method)
    assert float((flipped * planted).sum()) < 0  # sign follows feature − control


def test_direction_file_round_trip_and_refusal(tmp_path):
    from data_pipelines.errors import DataError

    path = save_direction(
        tmp_path / "d.safetensors",
        {"blocks.1.resid": torch.ones(*GRID, 32)},
        {
            "format": "physfm-direction",
            "points": ["blocks.1.resid"],
            "feature": "nu>=4e-3",
            "control": "nu<2e-3",
            "model_fingerprint": "abc",
        },
    )
    d = load_direction(path)
    assert d.points == ["blocks.1.resid"] and d.vectors["blocks.1.resid"].shape == (*GRID, 32)
    assert json.loads((tmp_path / "d.safetensors.json").read_text())["feature"] == "nu>=4e-3"
    assert infer_target(d.meta) == "nu"
    (tmp_path / "junk.safetensors").write_bytes(b"not a direction")
    with pytest.raises(DataError, match="unreadable direction"):
        load_direction(tmp_path / "junk.safetensors")


# ------------------------------------------------------------------------------------------
# injection
def test_steering_adds_alpha_times_the_token_norm_on_frame_tokens_only():
    delta = torch.randn(*GRID, 8)
    h = torch.randn(2, 1 + 2 * 16, 8)
    positions = torch.zeros(1 + 2 * 16, 3, dtype=torch.long)
    positions[0, 0] = -1  # the conditioning token
    grid = torch.stack(
        torch.meshgrid(torch.arange(2), torch.arange(4), torch.arange(4), indexing="ij"), -1
    )
    positions[1:] = grid.reshape(-1, 3)
    added = steering_fn(delta, 0.5, "as-is")(h, positions)
    assert torch.equal(added[:, 0], torch.zeros(2, 8))
    torch.testing.assert_close(added[:, 1:].norm(dim=-1), 0.5 * h[:, 1:].norm(dim=-1))
    # the token at grid cell (x=2, y=3) of frame 1 gets Δ[2, 3]'s direction
    k = 1 + 16 + 2 * 4 + 3
    cos = torch.nn.functional.cosine_similarity(added[0, k], delta[2, 3], dim=0)
    assert cos > 0.9999
    mean_added = steering_fn(delta, -1.0, "mean")(h, positions)
    cos = torch.nn.functional.cosine_similarity(
        mean_added[1, 5], -delta.reshape(-1, 8).mean(0), dim=0
    )
    assert cos > 0.9999


def test_alpha_zero_reproduces_the_unsteered_rollout_exactly(tiny_model):
    model = tiny_model
    direction = Direction(
        {"blocks.0.resid": torch.randn(*GRID, 32), "blocks.1.resid": torch.randn(*GRID, 32)},
        {"points": ["blocks.0.resid", "blocks.1.resid"]},
    )
    context = torch.randint(
        0, 16, (3, N_CONTEXT, *GRID), generator=torch.Generator().manual_seed(1)
    )
    ids = torch.zeros(3, dtype=torch.long)
    plain = model.generate_frames(context, 3, ids)
    for use_cache in (True, False):
        with steering(model, direction, 0.0):
            zero = model.generate_frames(context, 3, ids, use_cache=use_cache)
        assert torch.equal(zero, plain)
    with steering(model, direction, 3.0):
        steered = model.generate_frames(context, 3, ids)
    assert not torch.equal(steered, plain)  # the hooks were live
    assert torch.equal(model.generate_frames(context, 3, ids), plain)  # and are removed on exit


# ------------------------------------------------------------------------------------------
# dose–response
def test_dose_response_spearman_on_a_monotone_case():
    alphas = [-1, -0.5, 0, 0.5, 1]
    rng = np.random.default_rng(0)
    # rises with α, windows noisy
    values = np.array(alphas)[:, None] * 2 + rng.normal(0, 0.05, (5, 8))
    r = dose_response(alphas, values)
    assert r["spearman"] == pytest.approx(1.0) and len(r["mean"]) == 5 and r["std"][0] < 0.1
    assert dose_response(alphas, -np.exp(values))["spearman"] == pytest.approx(-1.0)
    bumpy = dose_response(alphas, np.array([[0.0], [2.0], [1.0], [3.0], [4.0]]))
    assert bumpy["spearman"] == pytest.approx(0.9)
    assert parse_alphas("0,0.5,1") == [0.0, 0.5, 1.0]


# ------------------------------------------------------------------------------------------ physics
# statistics
def _grid(n: int):
    x = np.arange(n) * 2 * np.pi / n
    return np.meshgrid(x, x, indexing="ij")


def test_enstrophy_and_spectrum_of_a_single_mode():
    X, Y = _grid(32)
    w = 2.0 * np.sin(3 * X)  # ⟨ω²⟩ = A²/2 → enstrophy A²/4
    assert enstrophy(w) == pytest.approx(1.0)
    k, e = radial_spectrum(w)
    assert k[np.argmax(e)] == 3 and e.sum() == pytest.approx((w**2).mean())  # Parseval
    assert dominant_wavelength(w) == pytest.approx(32 / 3)
    assert dominant_wavelength(np.cos(5 * X) + np.cos(5 * Y), length=2 * np.pi) == pytest.approx(
        2 * np.pi / 5
    )


def test_spectral_slope_of_a_power_law_field():
    n = 64
    kx = np.fft.fftfreq(n, 1 / n)
    K = np.sqrt(kx[:, None] ** 2 + kx[None, :] ** 2)
    rng = np.random.default_rng(0)
    # |f̂|² ∝ k^(-4) per mode → shell sum E(k) ∝ k · k^(-4) = k^(-3)
    amp = np.where(K > 0, 1.0 / np.maximum(K, 1.0) ** 2, 0.0)
    field = np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((n, n)))).real
    k, e = radial_spectrum(field)
    assert spectral_slope(k, e, 3, 20) == pytest.approx(-3.0, abs=0.25)
    u = np.stack([field, np.roll(field, 7, axis=0)])  # a "velocity" [2, n, n]
    k, e_kin = kinetic_energy_spectrum(u)
    assert spectral_slope(k, e_kin, 3, 20) == pytest.approx(-3.0, abs=0.25)


def test_physics_statistics_per_dataset():
    X, Y = _grid(32)
    frames = np.stack([np.sin(2 * X) * 2, np.cos(2 * Y), np.sin(X)])[None]  # [1, C, n, n]
    ns = physics_statistics("navier_stokes2d", frames, ["vorticity", "velocity_x", "velocity_y"])
    assert list(ns) == ["enstrophy", "energy_spectrum_slope"] and ns["enstrophy"][
        0
    ] == pytest.approx(1.0)
    gs = physics_statistics(
        "gray_scott2d", np.stack([np.ones_like(X), np.sin(4 * X)])[None], ["u", "v"]
    )
    assert gs["pattern_wavelength"][0] == pytest.approx(8.0)
    other = physics_statistics(
        "burgers1d", np.sin(np.arange(64) * 2 * math.pi * 4 / 64)[None, None], ["u"], n_dims=1
    )
    assert other["spectral_wavelength"][0] == pytest.approx(16.0)


# ------------------------------------------------------------------------------------------ CLI end
# to end
@pytest.mark.slow
def test_steer_direction_and_rollout_cli(tmp_path, capsys):
    """Tiny random model + tokenizer (tests/rollout_fixtures): plumbing, files, α = 0 identity,
    metadata."""
    from physfm.cli import main
    from tests.rollout_fixtures import build_tiny_model

    # each split's file has one "speed": 0.3 train, 0.4 valid, 0.5 test
    paths = build_tiny_model(tmp_path)
    export, shards = str(paths["export"]), str(paths["shards"])
    direction = tmp_path / "speed.safetensors"
    rc = main(
        [
            "steer",
            "direction",
            "--ckpt",
            export,
            "--data",
            shards,
            "--feature",
            "speed>=0.45",
            "--control",
            "speed<0.35",
            "--layer",
            "1",
            "--layer",
            "blocks.0.resid",
            "--split",
            "train,test",
            "--out",
            str(direction),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    d = load_direction(direction)
    assert d.points == ["blocks.1.resid", "blocks.0.resid"] and d.vectors[
        "blocks.1.resid"
    ].shape == (4, 4, 32)
    assert (
        d.meta["counts"]["feature"] > 0
        and d.meta["counts"]["control"] > 0
        and len(d.meta["model_fingerprint"]) == 64
    )
    out = tmp_path / "steer"
    rc = main(
        [
            "steer",
            "rollout",
            "--ckpt",
            export,
            "--data",
            shards,
            "--direction",
            str(direction),
            "--alpha=-1,0,1",
            "--out",
            str(out),
            "--horizon",
            "2",
            "--max-windows",
            "3",
            "--spatial-mode",
            "mean",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["alpha0_identical"] is True and m["target"] == "speed" and m["n_windows"] == 3
    assert (
        set(m["curves"]) >= {"probe speed", "spectral_wavelength"}
        and len(m["curves"]["probe speed"]["mean"]) == 3
    )
    for name in ("report.md", "dose_response.png", "steered_frames.png", "probe/probe.safetensors"):
        assert (out / name).is_file(), name
    assert (
        main(
            [
                "steer",
                "rollout",
                "--ckpt",
                export,
                "--data",
                shards,
                "--direction",
                str(tmp_path / "nope"),
                "--out",
                str(out),
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_quickstart_probe_steer_stage(tmp_path):
    from physfm.quickstart.pipeline import STAGES, Context
    from physfm.quickstart.steer import stage_probe_steer
    from tests.steer_fixtures import build_tiny_viscosity_model

    assert STAGES[-1] == ("probe + steer", stage_probe_steer)
    paths = build_tiny_viscosity_model(tmp_path / "run")
    ctx = Context(
        out=tmp_path / "qs", state={"ar_run": str(paths["export"]), "shards": str(paths["shards"])}
    )
    ctx.out.mkdir()
    metrics = stage_probe_steer(ctx)
    assert metrics["alpha0_identical"] is True and -1 <= metrics["spearman_probe"] <= 1
    assert 0 <= metrics["regime_accuracy"] <= 1 and "probe_r2_code_histogram" in metrics
    assert len(ctx.figures) == 3 and all((ctx.out / path).is_file() for _, path in ctx.figures)
    assert "Probe + steer" in ctx.notes[-1]
