"""``physfm probe``: linear probes per layer that read a simulation parameter out of pooled
activations.

For every hook point (the embedding and each block's residual stream by default) a ridge regression
predicts the parameter (log scale for parameters spanning decades) from each window's mean-pooled
activations, and a ridge classifier predicts the regime (above/below a threshold, the median by
default). Scores are out-of-fold over grouped folds: whole trajectories (or files) are held out,
never single windows.

Two baselines sit beside the layers, because a concept that a histogram of the tokenizer's codes
already separates says nothing about the transformer: a probe on the window's code histogram, and
one on the embedding layer (the mean token embedding, a linear image of that histogram).

    from physfm.interp.probe import run_probe, Probe
    metrics = run_probe("runs/pretrain", "runs/tokens", "nu", "runs/probe")
    probe = Probe.load("runs/probe"); nu = probe.predict(probe.best_point, X)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data_pipelines.atomic import atomic_path, atomic_write_text
from data_pipelines.errors import DataError, InputError
from data_pipelines.run_record import write_metrics
from data_pipelines.shards import iter_samples
from physfm.inference.loading import load_model
from physfm.interp.activations import HISTOGRAM, ActivationStore, capture_to_disk
from physfm.interp.plots import plot_probe_layers
from physfm.interp.ridge import RidgeModel, cross_validate_targets, fit_final

PROBE_FILE = "probe.safetensors"


def default_points(n_layer: int) -> list[str]:
    return ["embedding", *(f"blocks.{i}.resid" for i in range(n_layer))]


def target_values(metas: list[dict[str, Any]], target: str) -> tuple[np.ndarray, np.ndarray]:
    """(values of ``target`` [n_with], mask [N] of the windows that have it); windows of other
    datasets in a mixed shard set simply lack the parameter and are left out, but some window must
    have it."""
    has = np.array([target in (m.get("params") or {}) for m in metas], dtype=bool)
    if not has.any():
        known = sorted({k for m in metas for k in (m.get("params") or {})})
        raise DataError(
            f"no window has the simulation parameter {target!r} (the windows have: {', '.join(known) or 'none'})"
        )
    return np.array([float(m["params"][target]) for m, h in zip(metas, has) if h]), has


def check_target_present(data: str | Path, split: str, target: str) -> None:
    """Refuse a ``target`` no window of ``data``'s split(s) carries, before any model work: a pass
    over the windows' metadata (it stops at the first window that has it)."""
    known: set[str] = set()
    for name in [s.strip() for s in split.split(",") if s.strip()]:
        for sample in iter_samples(data, name):
            params = sample["meta"].get("params") or {}
            if target in params:
                return
            known.update(params)
    raise DataError(
        f"{data}: no window has the simulation parameter {target!r} in split {split!r} "
        f"(the windows have: {', '.join(sorted(known)) or 'none'})"
    )


def choose_scale(y: np.ndarray, scale: str) -> str:
    """ "auto" → log when every value is positive and they span at least a factor of 5."""
    if scale == "auto":
        return "log" if (y > 0).all() and y.max() / y.min() >= 5 else "linear"
    if scale == "log" and not (y > 0).all():
        raise DataError("--scale log: the target has values <= 0")
    return scale


def group_keys(metas: list[dict[str, Any]], group_by: str) -> list[str]:
    """Hold-out unit per window: its trajectory (split, file, index) or its file."""
    if group_by == "trajectory":
        return [f"{m.get('split')}/{m.get('source_file')}#{m.get('trajectory')}" for m in metas]
    if group_by == "file":
        return [f"{m.get('split')}/{m.get('source_file')}" for m in metas]
    raise InputError(f"group_by: expected trajectory or file, got {group_by!r}")


@dataclass
class Probe:
    """Fitted probes per hook point; ``predict`` returns the parameter in its own units."""

    target: str
    scale: str
    models: dict[str, RidgeModel]
    best_point: str
    pool: str = "mean"

    def predict(self, point: str, X) -> np.ndarray:
        if point not in self.models:
            raise KeyError(f"no probe at {point!r} (have: {', '.join(self.models)})")
        z = self.models[point].predict(np.asarray(X, np.float64).reshape(len(X), -1))
        return np.exp(z) if self.scale == "log" else z

    def save(self, out_dir: str | Path) -> Path:
        import torch
        from safetensors.torch import save

        tensors, alphas = {}, {}
        for point, m in self.models.items():
            for key in ("mean", "std", "w"):
                tensors[f"{point}/{key}"] = torch.from_numpy(np.ascontiguousarray(getattr(m, key)))
            tensors[f"{point}/b"] = torch.tensor([m.b], dtype=torch.float64)
            alphas[point] = m.alpha
        meta = {
            "target": self.target,
            "scale": self.scale,
            "best_point": self.best_point,
            "pool": self.pool,
            "points": json.dumps(list(self.models)),
            "alphas": json.dumps(alphas),
        }
        path = Path(out_dir) / PROBE_FILE
        with atomic_path(path) as tmp:
            tmp.write_bytes(save(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, location: str | Path) -> Probe:
        from safetensors import safe_open

        path = Path(location)
        path = path / PROBE_FILE if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"{location}: no {PROBE_FILE} (run `physfm probe` first)")
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
            alphas = json.loads(meta["alphas"])
            models = {
                p: RidgeModel(
                    f.get_tensor(f"{p}/mean"),
                    f.get_tensor(f"{p}/std"),
                    f.get_tensor(f"{p}/w"),
                    float(f.get_tensor(f"{p}/b")[0]),
                    alphas[p],
                )
                for p in json.loads(meta["points"])
            }
        return cls(
            meta["target"], meta["scale"], models, meta["best_point"], meta.get("pool", "mean")
        )


def probe_features(
    X: np.ndarray, y: np.ndarray, labels: np.ndarray, groups: list[str], n_folds: int, seed: int
) -> dict[str, Any]:
    """Held-out R² of the parameter and accuracy of the regime, from the same folds (and SVDs)."""
    reg, cls = cross_validate_targets(
        X, np.stack([y, labels], 1), groups, [False, True], n_folds=n_folds, seed=seed
    )
    return {
        "r2": reg["score"],
        "accuracy": cls["score"],
        "alphas": reg["alphas"],
        "pred": reg["pred"],
    }


def run_probe(
    location: str | Path,
    data: str | Path,
    target: str,
    out: str | Path,
    *,
    split: str = "valid,test",
    points: list[str] | None = None,
    selection: str | None = None,
    scale: Literal["auto", "log", "linear"] = "auto",
    threshold: float | None = None,
    group_by: str = "trajectory",
    n_folds: int = 5,
    max_windows: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    store: ActivationStore | None = None,
) -> dict[str, Any]:
    """Capture, probe every point and both baselines, save probes, metrics.json, report.md,
    r2_per_layer.png.

    ``store``: an existing capture (pool "mean", with the code histogram) instead of capturing
    again."""
    out = Path(out)
    if store is None:
        check_target_present(data, split, target)
        store = _capture(location, data, out, split, points, selection, max_windows, batch_size)
    points = points or [p for p in store.points if p != HISTOGRAM]
    raw, has, scale, cut, groups = _targets(store, data, target, scale, threshold, group_by)
    y = np.log(raw) if scale == "log" else raw
    labels = np.where(y > cut, 1.0, -1.0)
    layers, models, hist = _probe_points(store, points, has, y, labels, groups, n_folds, seed)
    block_points = [p for p in points if p != "embedding"] or points
    best = max(block_points, key=lambda p: layers[p]["r2"])
    probe = Probe(target, scale, models, best)
    probe.save(out)

    majority = float(max((labels > 0).mean(), (labels < 0).mean()))
    metrics = {
        "checkpoint": str(location),
        "data": str(data),
        "split": split,
        "selection": selection or "",
        "target": target,
        "scale": scale,
        "threshold": math.exp(cut) if scale == "log" else cut,
        "group_by": group_by,
        "n_folds": n_folds,
        "n_windows": len(y),
        "n_groups": len(set(groups)),
        "n_windows_without_target": int((~has).sum()),
        "target_values": sorted({round(float(v), 8) for v in raw}),
        "layers": {
            p: {
                "r2": round(v["r2"], 4),
                "accuracy": round(v["accuracy"], 4),
                "alpha_rel": v["alphas"],
            }
            for p, v in layers.items()
        },
        "best_layer": best,
        "probe_r2": round(layers[best]["r2"], 4),
        "probe_accuracy": round(layers[best]["accuracy"], 4),
        "probe_r2_code_histogram": round(hist["r2"], 4) if hist else None,
        "probe_accuracy_code_histogram": round(hist["accuracy"], 4) if hist else None,
        "probe_r2_embedding": round(layers["embedding"]["r2"], 4)
        if "embedding" in layers
        else None,
        "majority_accuracy": round(majority, 4),
        "model_fingerprint": store.index.get("model_fingerprint"),
    }
    _plot(out, metrics, points, layers, hist, majority)
    write_metrics(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", render_report(metrics))
    return metrics


def _probe_points(
    store: ActivationStore,
    points: list[str],
    has: np.ndarray,
    y: np.ndarray,
    labels: np.ndarray,
    groups,
    n_folds: int,
    seed: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any] | None]:
    """Cross-validated scores and the final probe of every point, and the code-histogram baseline's
    scores (None when the capture has no histogram) → (layers, models, hist)."""
    layers, models = {}, {}
    for point in points:
        X = store.load(point).numpy()[has]
        layers[point] = probe_features(X, y, labels, groups, n_folds, seed)
        models[point] = fit_final(X, y, groups, n_folds=n_folds, seed=seed)
    hist = (
        probe_features(store.load(HISTOGRAM).numpy()[has], y, labels, groups, n_folds, seed)
        if HISTOGRAM in store.points
        else None
    )
    return layers, models, hist


def _targets(
    store: ActivationStore, data, target: str, scale: str, threshold: float | None, group_by: str
):
    """(the target's values, which windows have it, the scale chosen, the regime threshold on that
    scale, each window's held-out group); refused when there are fewer than two groups or
    regimes."""
    metas = store.meta()
    raw, has = target_values(metas, target)
    metas = [m for m, h in zip(metas, has) if h]
    scale = choose_scale(raw, scale)
    y = np.log(raw) if scale == "log" else raw
    cut = (
        float(np.median(y))
        if threshold is None
        else (math.log(threshold) if scale == "log" else threshold)
    )
    groups = group_keys(metas, group_by)
    if len(set(groups)) < 2:
        raise DataError(
            f"{data}: the selected windows come from {len(set(groups))} {_plural(group_by)}; "
            f"held-out probing needs at least 2 (add --split or widen the selection)"
        )
    if len(set(np.where(y > cut, 1.0, -1.0))) < 2:
        raise DataError(
            f"{data}: every window is on one side of the threshold {math.exp(cut) if scale == 'log' else cut:g}"
        )
    return raw, has, scale, cut, groups


def _capture(
    location, data, out: Path, split, points, selection, max_windows, batch_size
) -> ActivationStore:
    """Mean-pooled activations at ``points`` (default: the embedding and every block) and the code
    histogram of each selected window, captured to ``out/activations``."""
    model, info = load_model(location)  # AR or diffusion (run.json kind)
    info = {**info, "location": str(location)}
    return capture_to_disk(
        model,
        info,
        data,
        out / "activations",
        points=points or default_points(model.config.n_layer),
        split=split,
        selection=selection,
        pool="mean",
        max_windows=max_windows,
        batch_size=batch_size,
        with_histogram=True,
    )


def _plot(
    out: Path,
    metrics: dict[str, Any],
    points: list[str],
    layers: dict,
    hist: dict | None,
    majority: float,
) -> None:
    """R² and accuracy per layer, with the code-histogram, embedding and majority-class
    baselines."""
    baselines = {"code histogram": {"r2": hist["r2"], "accuracy": hist["accuracy"]}} if hist else {}
    if "embedding" in layers:
        baselines["embedding layer"] = {
            "r2": layers["embedding"]["r2"],
            "accuracy": layers["embedding"]["accuracy"],
        }
    baselines["majority class"] = {"accuracy": majority}
    scale, group_by = metrics["scale"], metrics["group_by"]
    plot_probe_layers(
        points,
        [layers[p]["r2"] for p in points],
        [layers[p]["accuracy"] for p in points],
        baselines,
        out / "r2_per_layer.png",
        title=f"probe of {'log ' if scale == 'log' else ''}{metrics['target']}: {metrics['n_windows']} windows, "
        f"{metrics['n_groups']} held-out {_plural(group_by)}",
    )


def _plural(unit: str) -> str:
    return "trajectories" if unit == "trajectory" else f"{unit}s"


def render_report(m: dict[str, Any]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}"
    lines = [
        f"# Probe of {m['target']}",
        "",
        f"`{m['checkpoint']}` on `{m['data']}` (split {m['split']}{', selection ' + m['selection'] if m['selection'] else ''}): "
        f"{m['n_windows']} windows from {m['n_groups']} {_plural(m['group_by'])}; {m['n_folds']}-fold CV holding "
        f"out whole {_plural(m['group_by'])}; target {'log ' if m['scale'] == 'log' else ''}{m['target']}, regime threshold "
        f"{m['threshold']:.4g}.",
        "",
        "| features | held-out R² | regime accuracy |",
        "|---|---:|---:|",
    ]
    for p, v in m["layers"].items():
        lines.append(
            f"| {p}{' (best)' if p == m['best_layer'] else ''} | {v['r2']:.3f} | {v['accuracy']:.3f} |"
        )
    lines += [
        f"| code histogram (baseline) | {fmt(m['probe_r2_code_histogram'])} | "
        f"{fmt(m['probe_accuracy_code_histogram'])} |",
        f"| majority class | – | {m['majority_accuracy']:.3f} |",
        "",
    ]
    best, hist, emb = m["probe_r2"], m["probe_r2_code_histogram"], m["probe_r2_embedding"]
    above = [
        name
        for name, v in (("code histogram", hist), ("embedding", emb))
        if v is not None and best > v
    ]
    lines.append(
        f"Best layer {m['best_layer']}: R² {best:.3f}"
        + (
            f", above the {' and '.join(above)} baseline(s)."
            if above
            else ", not above the baselines: the tokens alone already carry what the probe reads."
        )
    )
    lines += ["", "![probe R² per layer](r2_per_layer.png)"]
    return "\n".join(lines) + "\n"
