"""``physfm steer rollout``: roll out with a concept direction injected, for each α, and measure the
dose–response.

For every α the same context windows are rolled out (greedy) with the direction added at its
layer(s) at every step (``physfm.interp.steer.steering``). Two measurements per α, averaged over
windows:

(a) the probe's reading of the steered parameter on the generated frames: the last window-length of
token
    frames (context tail + generated) is read by the *unsteered* model, pooled as in ``physfm probe``, and
    the probe at its best layer predicts the parameter — does the model now see the other regime? With
    conditional tokens the rollout runs in field space as the model's own does (each window re-keyed) and
    the probe's window is the last frames re-encoded, its first frame a key frame.
(b) a physical statistic of the decoded generated fields (``physfm.eval.physics_stats``: enstrophy
and the
    energy-spectrum slope for Navier–Stokes, pattern wavelength for Gray–Scott) — did the physics move?

Each curve is scored by Spearman's ρ between α and its per-α mean. α = 0 runs the hooks with a zero
coefficient and must reproduce the unsteered rollout token for token (checked, recorded as
``alpha0_identical``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from data_pipelines.atomic import atomic_write_text
from data_pipelines.errors import DataError
from data_pipelines.run_record import write_metrics
from data_pipelines.shards import read_manifest
from physfm.eval.physics_stats import physics_statistics
from physfm.inference import PhysicsModel
from physfm.interp.activations import iter_windows, model_fingerprint, pooled_activations
from physfm.interp.plots import plot_dose_response, plot_steered_frames
from physfm.interp.probe import Probe, run_probe
from physfm.interp.selection import parse_selection
from physfm.interp.steer import load_direction, steering


def dose_response(alphas: list[float], values: np.ndarray) -> dict[str, Any]:
    """values [A, N] (per α, per window) → per-α mean/std and Spearman ρ of the means against α."""
    from scipy.stats import spearmanr

    values = np.asarray(values, np.float64)
    if values.shape[0] != len(alphas):
        raise ValueError(
            f"dose_response: {values.shape[0]} rows of values for {len(alphas)} alphas"
        )
    mean = values.reshape(len(alphas), -1).mean(1)
    std = values.reshape(len(alphas), -1).std(1)
    rho = (
        float(spearmanr(alphas, mean).statistic)
        if len(alphas) > 2 and np.ptp(mean) > 0
        else float("nan")
    )
    return {"mean": mean.tolist(), "std": std.tolist(), "spearman": rho}


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise DataError(
            f"--alpha {text!r}: expected comma-separated numbers, e.g. -1,-0.5,0,0.5,1"
        ) from None
    if not alphas or len(set(alphas)) != len(alphas):
        raise DataError(f"--alpha {text!r}: give distinct values")
    return alphas


def infer_target(direction_meta: dict[str, Any]) -> str:
    names = (
        parse_selection(direction_meta["feature"]).names
        | parse_selection(direction_meta["control"]).names
    )
    names -= {"dataset", "source_file", "trajectory", "start", "split"}
    if len(names) != 1:
        raise DataError(
            f"cannot tell which parameter the direction steers from its selections "
            f"({direction_meta['feature']!r} vs {direction_meta['control']!r}); pass --target"
        )
    return names.pop()


@torch.no_grad()
def _generate(
    pm: PhysicsModel, ctx: torch.Tensor, n_in: int, n_win: int, horizon: int, dataset: str
):
    """Context token frames → (generated token frames, the last window of token frames for the
    probe, the generated fields [B, H, C, *space] as numpy, physical units)."""
    if pm.conditional:
        # Conditional tokens roll out in field space, each window re-keyed as in training (the
        # model's own rollout); the probe reads the last window re-encoded, its first frame a key
        # frame like every window it was fit on (sliding in token space would hand it windows of
        # changes with no key frame).
        context = pm.decode(ctx, dataset, n_frames=n_in)
        raw = {"refine": False} if pm.kind == "ar" else {}  # a diffusion model has no refiner
        fields, new = pm.rollout(context, horizon, dataset, return_tokens=True, **raw)
        frames = torch.cat([context.to(fields.device), fields], 1)
        return new, pm.encode(frames[:, -n_win:], dataset).cpu(), fields.cpu().numpy()
    new = pm.generate_tokens(ctx, horizon, dataset)
    seq = torch.cat([ctx.to(new.device), new], 1)
    c = pm.temporal_compression
    fields = pm.decode(seq, dataset, n_frames=n_in + c * horizon)[:, n_in:].cpu().numpy()
    return new, seq[:, -n_win:], fields


def steer_rollout(
    location: str | Path,
    data: str | Path,
    direction: str | Path,
    alphas: list[float],
    out: str | Path,
    *,
    horizon: int | None = None,
    spatial_mode: Literal["as-is", "mean"] = "as-is",
    split: str = "test",
    selection: str | None = None,
    max_windows: int = 8,
    probe: str | None = None,
    target: str | None = None,
    probe_split: str = "valid,test",
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Steered rollouts for each α; metrics.json, report.md, dose_response.png,
    steered_frames.png."""
    if horizon is not None and horizon < 1:  # before any work (a probe may be fitted first)
        raise DataError(f"--horizon must be >= 1, got {horizon}")
    out = Path(out)
    pm, direc = _model_and_direction(location, direction)
    target = target or infer_target(direc.meta)
    if probe is None:
        run_probe(location, data, target, out / "probe", split=probe_split, seed=seed)
        probe = str(out / "probe")
    reader = Probe.load(probe)
    if reader.target != target:
        raise DataError(f"{probe}: probes {reader.target!r}, the direction steers {target!r}")
    horizon = pm.n_window_tokens if horizon is None else horizon
    # contexts of the concept's own system
    if selection is None and len(direc.meta.get("datasets") or []) == 1:
        selection = f"dataset=='{direc.meta['datasets'][0]}'"
    batches = _contexts(pm, data, split, selection, max_windows, batch_size)
    datasets = _check_contexts(batches, data, direction, direc.meta, spatial_mode)
    m = _measure(pm, reader, direc, batches, alphas, horizon, spatial_mode)
    truth = np.array([float((meta.get("params") or {}).get(target, math.nan)) for meta in m.metas])
    curves = {f"probe {target}": dose_response(alphas, m.probe_values)}
    for key, values in m.stats.items():
        curves[key] = dose_response(alphas, values)
    physics_key = next(iter(m.stats))
    metrics = {
        "checkpoint": str(location),
        "data": str(data),
        "split": split,
        "selection": selection or "",
        "direction": str(direction),
        "points": direc.points,
        "method": direc.meta.get("method"),
        "feature": direc.meta.get("feature"),
        "control": direc.meta.get("control"),
        "target": target,
        "spatial_mode": spatial_mode,
        "alphas": alphas,
        "horizon": horizon,
        "n_windows": len(m.metas),
        "datasets": datasets,
        "probe": str(probe),
        "probe_point": reader.best_point,
        "context_target_mean": float(np.nanmean(truth)),
        "alpha0_identical": m.identical,
        "curves": curves,
        "spearman_probe": curves[f"probe {target}"]["spearman"],
        "physics_statistic": physics_key,
        "spearman_physics": curves[physics_key]["spearman"],
    }
    _write(out, metrics, m.examples, pm.channel_names(datasets[0]))
    return metrics


def _check_contexts(
    batches: list, data: str | Path, direction: str | Path, meta: dict[str, Any], spatial_mode: str
) -> list[str]:
    """The contexts' datasets (exactly one), refused when the direction's token grid cannot be
    added to theirs as is."""
    datasets = sorted({b.dataset for b in batches})
    if len(datasets) > 1:  # each system has its own physical statistic: one system per run
        raise DataError(
            f"{data}: the contexts come from {', '.join(datasets)}; pick one system with --select, "
            f"e.g. \"dataset=='{datasets[0]}'\""
        )
    grids = {tuple(b.tokens.shape[2:]) for b in batches}
    if spatial_mode == "as-is" and grids != {tuple(meta.get("grid", ()))}:
        raise DataError(
            f"{direction}: a direction over the token grid {meta.get('grid')} cannot be added "
            f"as is to rollouts on {sorted(grids)}; use --spatial-mode mean"
        )
    return datasets


def _model_and_direction(location: str | Path, direction: str | Path):
    """The model and the direction, refused when the direction was computed on another model."""
    direc = load_direction(direction)
    pm = PhysicsModel.from_pretrained(location, refiner=None)
    if direc.meta.get("model_fingerprint") != model_fingerprint(pm.model):
        raise DataError(
            f"{direction}: computed on another model (fingerprint {direc.meta.get('model_fingerprint', '?')[:12]}"
            f", {location} is {model_fingerprint(pm.model)[:12]}); recompute it with `physfm steer direction`"
        )
    return pm, direc


def _contexts(
    pm: PhysicsModel, data, split: str, selection: str | None, max_windows: int, batch_size: int
):
    """The context windows as token batches (field shards are encoded with the model's
    tokenizer)."""
    encoder = None
    if not read_manifest(data).get("tokenizer_fingerprint"):
        encoder = lambda frames, ds: pm.encode(frames, ds).cpu()
    return list(
        iter_windows(
            data,
            split,
            selection=selection,
            max_windows=max_windows,
            batch_size=batch_size,
            tokenizer_fingerprint=pm.info.get("tokenizer_fingerprint"),
            encoder=encoder,
        )
    )


@dataclass
class Measured:
    """Per α and window: the probe's readings [A, N] and each physical statistic [A, N]; the α = 0
    check, the first window's last generated frame per α, the windows' meta."""

    probe_values: np.ndarray
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    identical: bool | None = None
    examples: dict[float, np.ndarray] = field(default_factory=dict)
    metas: list[dict[str, Any]] = field(default_factory=list)


def _measure(
    pm: PhysicsModel,
    reader: Probe,
    direc,
    batches: list,
    alphas: list[float],
    horizon: int,
    spatial_mode,
):
    """Roll every batch out unsteered, then steered at each α, and read the probe and the
    statistics."""
    m = Measured(np.zeros((len(alphas), 0)))
    model, n_ctx, n_win = pm.model, pm.n_context_tokens, pm.n_window_tokens
    n_in = 1 + pm.temporal_compression * (n_ctx - 1)
    for batch in batches:
        ctx = batch.tokens[:, :n_ctx]
        ids = torch.full((len(ctx),), pm.dataset_names.index(batch.dataset))
        base, _, _ = _generate(pm, ctx, n_in, n_win, horizon, batch.dataset)  # unsteered reference
        per_alpha_probe, per_alpha_stats = [], []
        for alpha in alphas:
            with steering(model, direc, alpha, spatial_mode):
                new, window, fields = _generate(pm, ctx, n_in, n_win, horizon, batch.dataset)
            if alpha == 0:
                same = bool(torch.equal(new, base))
                m.identical = same if m.identical is None else m.identical and same
            # read unsteered
            acts = pooled_activations(model, window, ids, [reader.best_point], reader.pool)
            per_alpha_probe.append(
                reader.predict(reader.best_point, acts[reader.best_point].numpy())
            )
            s = physics_statistics(
                batch.dataset, fields, pm.channel_names(batch.dataset), pm.n_spatial_dims
            )
            # mean over generated frames
            per_alpha_stats.append({k: v.mean(axis=1) for k, v in s.items()})
            if batch is batches[0]:
                m.examples[alpha] = fields[0, -1]
        m.probe_values = np.concatenate([m.probe_values, np.stack(per_alpha_probe)], axis=1)
        for key in per_alpha_stats[0]:
            block = np.stack([s[key] for s in per_alpha_stats])
            m.stats[key] = (
                block if key not in m.stats else np.concatenate([m.stats[key], block], axis=1)
            )
        m.metas += batch.meta
    return m


def _write(
    out: Path, metrics: dict[str, Any], examples: dict[float, np.ndarray], channels: list[str]
) -> None:
    plot_dose_response(
        metrics["alphas"],
        metrics["curves"],
        out / "dose_response.png",
        title=f"steering {metrics['points']} ({metrics['feature']} − {metrics['control']}), "
        f"{metrics['n_windows']} windows, {metrics['spatial_mode']}",
    )
    dataset = metrics["datasets"][0]
    plot_steered_frames(
        examples, channels, out / "steered_frames.png", title=f"last generated frame, {dataset}"
    )
    write_metrics(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", render_report(metrics))


def render_report(m: dict[str, Any]) -> str:
    lines = [
        f"# Steering rollout along {m['feature']} − {m['control']}",
        "",
        f"`{m['checkpoint']}`, direction `{m['direction']}` ({m['method']}) at {', '.join(m['points'])}, "
        f"spatial mode {m['spatial_mode']}; {m['n_windows']} windows of `{m['data']}` ({m['split']}), "
        f"{m['horizon']} generated token frames per α (greedy). Probe: `{m['probe']}` at {m['probe_point']}. "
        f"Mean true {m['target']} of the contexts: {m['context_target_mean']:.4g}.",
        "",
        "| α | " + " | ".join(m["curves"]) + " |",
        "|---:|" + "---:|" * len(m["curves"]),
    ]
    for i, alpha in enumerate(m["alphas"]):
        lines.append(
            f"| {alpha:g} | "
            + " | ".join(f"{c['mean'][i]:.4g} ± {c['std'][i]:.2g}" for c in m["curves"].values())
            + " |"
        )
    lines.append(
        "| Spearman ρ | " + " | ".join(f"{c['spearman']:.3f}" for c in m["curves"].values()) + " |"
    )
    lines += [
        "",
        f"α = 0 reproduces the unsteered rollout exactly: {m['alpha0_identical']}.",
        "",
        "![dose-response](dose_response.png)",
        "",
        "![steered frames](steered_frames.png)",
    ]
    return "\n".join(lines) + "\n"
