"""The quickstart's probe + steer stage (after pretrain): probe the quickstart model for
Navier–Stokes viscosity, take the high-ν − low-ν direction at a middle layer, and roll out steered
along it.

The quickstart simulates two ν values (1e-3, 1e-2), so the probe's R² is close to a two-class
separation; ``bench/steering.py`` is the measurement with ν swept over a decade. Sizes are set by
time (≈ 30 s on 2 cores for the tiny model's 16×16-token frames; a generated frame is 256 decode
steps): 16 validation + test windows for the probe, 8 training windows per regime for the direction,
3 test contexts × 1 generated frame × 3 strengths (+ the unsteered reference) for the rollout.
"""

from __future__ import annotations

from typing import Any

from physfm.inference.loading import load_ar_model
from physfm.interp.probe import run_probe
from physfm.interp.steer import compute_direction
from physfm.interp.steer_rollout import steer_rollout

SYSTEM = "navier_stokes2d"
FEATURE = f"dataset=='{SYSTEM}' and nu>=0.005"  # the ν = 1e-2 regime (weakly chaotic)
CONTROL = f"dataset=='{SYSTEM}' and nu<0.005"  # the ν = 1e-3 regime (turbulent)


def stage_probe_steer(ctx) -> dict[str, Any]:
    """Probe ν per layer, a steering direction at the middle layer, and a steered rollout with its
    dose–response."""
    missing = [k for k in ("ar_run",) if k not in ctx.state] + (
        [] if ctx.state.get("tokens") or ctx.state.get("shards") else ["tokens"]
    )
    if missing:
        raise RuntimeError(
            f"quickstart: the probe + steer stage needs {', '.join(missing)} from earlier stages "
            "(pretrain); run the whole quickstart or those stages first"
        )
    run, data = ctx.state["ar_run"], ctx.state.get("tokens") or ctx.state["shards"]
    model, info = load_ar_model(run)
    if SYSTEM not in info["dataset_names"]:
        ctx.notes.append(f"Probe + steer: skipped (the model was not trained on {SYSTEM}).")
        return {"skipped": True}
    out = ctx.out / "steer"
    probe = run_probe(
        run,
        data,
        "nu",
        out / "probe",
        split="valid,test",
        selection=f"dataset=='{SYSTEM}'",
        n_folds=4,
        max_windows=16,
        seed=ctx.seed,
    )
    layer = f"blocks.{model.config.n_layer // 2}.resid"
    direction = out / "nu_direction.safetensors"
    compute_direction(
        run, data, FEATURE, CONTROL, [layer], direction, split="train", max_windows=8, seed=ctx.seed
    )
    steered = steer_rollout(
        run,
        data,
        direction,
        [-1.0, 0.0, 1.0],
        out / "rollout",
        horizon=1,
        selection=f"dataset=='{SYSTEM}'",
        max_windows=3,
        probe=str(out / "probe"),
        seed=ctx.seed,
    )
    rel = out.relative_to(ctx.out)
    ctx.figures.append(
        (
            f"Probe of ν per layer ({SYSTEM}; held-out trajectories)",
            str(rel / "probe" / "r2_per_layer.png"),
        )
    )
    ctx.figures.append(
        (
            f"Steering along high-ν − low-ν at {layer}: dose–response",
            str(rel / "rollout" / "dose_response.png"),
        )
    )
    ctx.figures.append(
        (
            "Steered rollouts: last generated frame per α",
            str(rel / "rollout" / "steered_frames.png"),
        )
    )
    ctx.notes.append(
        f"Probe + steer: best layer {probe['best_layer']} reads ν with held-out R² {probe['probe_r2']:.2f} "
        f"(code histogram {probe['probe_r2_code_histogram']:.2f}, embedding {probe['probe_r2_embedding']:.2f}); "
        f"steering at {layer}: Spearman ρ(α, probe ν) = {steered['spearman_probe']:.2f}, "
        f"ρ(α, {steered['physics_statistic']}) = {steered['spearman_physics']:.2f}; α = 0 reproduces the "
        f"unsteered rollout: {steered['alpha0_identical']} (details: {rel}/)."
    )
    return {
        "probe_r2": probe["probe_r2"],
        "probe_r2_code_histogram": probe["probe_r2_code_histogram"],
        "probe_r2_embedding": probe["probe_r2_embedding"],
        "regime_accuracy": probe["probe_accuracy"],
        "spearman_probe": round(steered["spearman_probe"], 3),
        "spearman_physics": round(steered["spearman_physics"], 3),
        "alpha0_identical": steered["alpha0_identical"],
    }
