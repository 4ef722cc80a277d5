"""``physfm evaluate`` and ``physfm rollout``: roll the model out on held-out windows, score it with
The Well's VRMSE per dataset, field and horizon, always beside the baselines, and write metrics,
report and plots.

Methods scored on the same windows (the first four need only the tokenizer and the data):

* ``persistence``: repeat the last context frame (the floor any forecaster must clear);
* ``copy_tokens``: the last context token frame repeated and decoded (persistence through the
  tokenizer);
* ``tokenizer_ceiling``: the true future's own tokens decoded (no token model can do better);
* ``ar``: the transformer's rollout (greedy unless a temperature is given), decoded;
* ``ar_refined``: the same with the refinement U-Net, when the model has one;
* ``diffusion``: in place of ``ar`` for a diffusion checkpoint
  (``physfm/inference/diffusion_model.py``): latents sampled with ``sampling_steps`` ODE steps from
  noise seeded by ``seed``, decoded.

VRMSE at horizon k is the k-th predicted frame's, averaged over windows: ``tokenizer.metrics.vrmse``
per window and field, in physical units (it equals ``the_well.benchmark.metrics.VRMSE``). 1.0 is
what the spatial mean of the true frame scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_pipelines.atomic import atomic_path, atomic_write_text
from data_pipelines.errors import DataError, InputError
from data_pipelines.run_record import write_metrics
from physfm.eval.plots import rollout_strip, vrmse_vs_horizon
from physfm.eval.windows import evaluation_windows
from physfm.inference import PhysicsModel
from physfm.inference.sampling import Sampling
from tokenizer.metrics import vrmse

BASELINES = ("persistence", "copy_tokens", "tokenizer_ceiling")
# predictions made by pm.rollout; pm.method names the first
MODEL_METHODS = ("ar", "ar_refined", "diffusion")


@dataclass
class DatasetScores:
    """Running sums for one dataset: VRMSE [H, C] per method, token accuracy [H] per method."""

    channel_names: list[str]
    n_windows: int = 0
    vrmse_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    token_hits: dict[str, torch.Tensor] = field(default_factory=dict)
    # first window: truth + each prediction
    example: dict[str, torch.Tensor] = field(default_factory=dict)
    predictions: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    meta: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self, method: str, pred: torch.Tensor, truth: torch.Tensor, n_spatial_dims: int
    ) -> None:
        per_window = vrmse(pred.float(), truth.float(), n_spatial_dims).double()  # [B, H, C]
        self.vrmse_sum[method] = self.vrmse_sum.get(method, 0) + per_window.sum(0)

    def mean(self, method: str) -> torch.Tensor:
        return self.vrmse_sum[method] / max(self.n_windows, 1)  # [H, C]


def score_windows(
    pm,
    shards: str | Path,
    split: str,
    horizon: int,
    *,
    methods: tuple[str, ...],
    max_windows: int | None = None,
    batch_size: int = 32,
    sampling: Sampling | None = None,
    seed: int = 0,
    keep_predictions: bool = False,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, DatasetScores], dict[str, float]]:
    """Roll out and score every method on the split's windows of ``horizon`` → (scores per dataset,
    seconds per method). ``extra`` maps more method names to ``fn(context, horizon, dataset) ->
    prediction``."""
    n = pm.n_spatial_dims
    # Per-call sampling options (an AR model's), refused by name up front when set for another kind.
    options = pm.rollout_options(**(sampling or Sampling()).options("rollout"))
    scores: dict[str, DatasetScores] = {}
    seconds = {m: 0.0 for m in (*methods, *(extra or {}))}
    for batch in evaluation_windows(
        shards,
        split,
        horizon,
        batch_size=batch_size,
        max_windows=max_windows,
        datasets=[d for d in pm.dataset_names],
    ):
        name, ctx = batch.dataset, batch.context
        s = scores.setdefault(name, DatasetScores(pm.channel_names(name)))
        window_ids, truth_ids = _encode_windows(pm, batch, methods, seconds)
        preds: dict[str, torch.Tensor] = {}
        for method in methods:
            start = time.perf_counter()
            preds[method], ids = _predict(
                pm, method, batch, horizon, window_ids, seed, batch_size, options
            )
            seconds[method] += time.perf_counter() - start
            # fraction of tokens equal to the truth's own
            if ids is not None and truth_ids is not None:
                hits = _token_hits(ids, truth_ids, copied=method == "copy_tokens")
                s.token_hits[method] = s.token_hits.get(method, 0) + hits
        for method, fn in (extra or {}).items():
            start = time.perf_counter()
            preds[method] = fn(ctx, horizon, name)
            seconds[method] += time.perf_counter() - start
        _record_batch(s, batch, preds, n, keep_predictions)
    if not scores:
        raise DataError(
            f"{shards}: the {split!r} split gave no windows for the model's datasets ({', '.join(pm.dataset_names)})"
        )
    return scores, seconds


def _encode_windows(
    pm, batch, methods: tuple[str, ...], seconds: dict[str, float]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(token ids of context + truth, the truth's part), or (None, None) when no method needs
    tokens; the time is added to ``seconds["encode"]``."""
    if not any(m in methods for m in ("tokenizer_ceiling", "copy_tokens", *MODEL_METHODS)):
        return None, None
    # One encode of context + truth serves the ceiling, copy-tokens and token accuracy (the
    # tokenizer is causal: the context's token frames are those of the context encoded alone).
    start = time.perf_counter()
    window_ids = pm.encode(torch.cat([batch.context, batch.truth], 1), batch.dataset)
    truth_ids = window_ids[:, pm.n_context_tokens :]  # window_ids: [B, T', *grid]
    seconds["encode"] = seconds.get("encode", 0.0) + time.perf_counter() - start
    return window_ids, truth_ids


def _predict(
    pm,
    method: str,
    batch,
    horizon: int,
    window_ids: torch.Tensor | None,
    seed: int,
    batch_size: int,
    options: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One method's prediction of the batch's next ``horizon`` frames → (fields, token ids or
    None)."""
    name, ctx, truth = batch.dataset, batch.context, batch.truth
    if method == "persistence":
        return ctx[:, -1:].expand_as(truth), None
    if method == "copy_tokens":
        ids = window_ids[:, pm.n_context_tokens - 1 : pm.n_context_tokens]
        pred = pm.copy_tokens(ctx, horizon, name, context_ids=window_ids[:, : pm.n_context_tokens])
        return pred, ids
    if method == "tokenizer_ceiling":
        return pm.tokenizer_ceiling(ctx, truth, name, window_ids=window_ids).cpu(), None
    if method in MODEL_METHODS:
        # "ar" is the raw model even when it has a refiner (which rollout would use by default)
        refine = (
            {"refine": method == "ar_refined"} if getattr(pm, "refiner", None) is not None else {}
        )
        return pm.rollout(
            ctx,
            horizon,
            name,
            seed=seed,
            batch_size=batch_size,
            return_tokens=True,
            **options,
            **refine,
        )
    raise ValueError(f"unknown method {method!r}")


def _token_hits(ids: torch.Tensor, truth_ids: torch.Tensor, *, copied: bool) -> torch.Tensor:
    """Tokens equal to the truth's, per predicted frame, summed over the batch: [frames]."""
    # a copied frame broadcasts against every truth frame
    ref = truth_ids if copied else truth_ids[:, : ids.shape[1]]
    return (ids.to(ref.device) == ref).flatten(2).float().mean(-1).sum(0).double().cpu()


def _record_batch(
    s: DatasetScores,
    batch,
    preds: dict[str, torch.Tensor],
    n_spatial_dims: int,
    keep_predictions: bool,
) -> None:
    """Add one batch's predictions to its dataset's running scores (and its first example)."""
    ctx, truth = batch.context, batch.truth
    for method, pred in preds.items():
        s.add(method, pred, truth, n_spatial_dims)
    if not s.example:
        s.example = {"truth": truth[0], **{m: p[0] for m, p in preds.items()}}
    if keep_predictions:
        for key, value in {"context": ctx, "truth": truth, **preds}.items():
            s.predictions.setdefault(key, []).append(value.cpu())
        s.meta += batch.meta
    s.n_windows += ctx.shape[0]


def summarize(scores: dict[str, DatasetScores], horizons: list[int]) -> dict[str, Any]:
    """Per dataset, field, method and horizon (VRMSE of that step's frame); overall = mean of
    datasets×fields."""
    out: dict[str, Any] = {
        "n_windows": {},
        "vrmse": {},
        "curves": {},
        "token_accuracy": {},
        "overall": {},
    }
    every: dict[str, dict[str, list[float]]] = {}
    for name, s in sorted(scores.items()):
        out["n_windows"][name] = s.n_windows
        fields: dict[str, Any] = {c: {} for c in s.channel_names}
        mean: dict[str, Any] = {}
        out["curves"][name] = {}
        for method in s.vrmse_sum:
            m = s.mean(method)  # [H, C]
            for j, c in enumerate(s.channel_names):
                fields[c][method] = {str(h): float(m[h - 1, j]) for h in horizons}
            mean[method] = {str(h): float(m[h - 1].mean()) for h in horizons}
            out["curves"][name][method] = [float(v) for v in m.mean(1)]
            for h in horizons:
                every.setdefault(method, {}).setdefault(str(h), []).extend(
                    float(v) for v in m[h - 1]
                )
        out["vrmse"][name] = {"fields": fields, "mean": mean}
        out["token_accuracy"][name] = {
            method: [float(v) for v in hits / max(s.n_windows, 1)]
            for method, hits in s.token_hits.items()
        }
    out["overall"] = {m: {h: sum(v) / len(v) for h, v in hs.items()} for m, hs in every.items()}
    out["persistence_above_1"] = sorted(
        {
            f"{name}/{c}"
            for name, d in out["vrmse"].items()
            for c, f in d["fields"].items()
            if "persistence" in f and max(f["persistence"].values()) > 1.0
        }
    )
    return out


# ----------------------------------------------------------------------------------------------
# evaluate
def _load(
    location, refine: bool | None, tokenizer, device: str, sampling: Sampling
) -> PhysicsModel:
    """The model evaluate and rollout score; ``refine=True`` requires a refiner."""
    options = sampling.options("load")
    pm = PhysicsModel.from_pretrained(location, tokenizer=tokenizer, device=device, **options)
    if refine and pm.refiner is None:
        raise InputError(
            f"{location}: --refine asked for, but the model has no refiner (train one with "
            "`physfm refine`, or pass --refiner DIR)"
        )
    return pm


def evaluate(
    location: str | Path,
    shards: str | Path,
    horizons: list[int],
    out: str | Path,
    *,
    split: str = "test",
    max_windows: int | None = None,
    batch_size: int = 32,
    refine: bool | None = None,
    sampling: Sampling | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
    device: str = "cpu",
    model=None,
) -> dict[str, Any]:
    """Score the model and the baselines; write metrics.json, report.md, strips and the horizon
    plot.

    ``refine``: None = with and without the refiner when the model has one; True = require one.
    ``sampling``: each model kind's options (temperature and refiner for AR, ODE steps for
    diffusion)."""
    horizons = sorted({int(h) for h in horizons})
    if not horizons or horizons[0] < 1:
        raise InputError(f"horizons: need positive integers, got {horizons}")
    sampling = sampling or Sampling()
    pm = model or _load(location, refine, tokenizer, device, sampling)
    refined = ("ar_refined",) if pm.refiner is not None and refine is not False else ()
    methods = (pm.method, *refined, *BASELINES)  # method: "diffusion" for a diffusion model
    start = time.perf_counter()
    scores, seconds = score_windows(
        pm,
        shards,
        split,
        max(horizons),
        methods=methods,
        max_windows=max_windows,
        batch_size=batch_size,
        sampling=sampling,
        seed=seed,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "checkpoint": str(location),
        "shards": str(shards),
        "split": split,
        "horizons": horizons,
        "methods": list(methods),
        # What a user gets by default (PhysicsModel.rollout / physfm rollout): refined when the run
        # has a refiner that helped on held-out windows when it was fit.
        "default_method": refined[0] if refined and pm.refines_by_default else methods[0],
        "temperature": sampling.ar.temperature,
        "top_k": sampling.ar.top_k,
        "seed": seed,
        "model": pm.describe(),
        **summarize(scores, horizons),
        "seconds": {
            **{m: round(v, 2) for m, v in seconds.items()},
            "total": round(time.perf_counter() - start, 2),
        },
    }
    metrics["figures"] = _write_figures(metrics, scores, methods, out, split)
    write_metrics(out / "metrics.json", metrics)
    _write(out / "report.md", render_report(metrics))
    return metrics


def _write_figures(
    metrics: dict[str, Any],
    scores: dict[str, DatasetScores],
    methods: tuple[str, ...],
    out: Path,
    split: str,
) -> list[str]:
    """The VRMSE-vs-horizon plot and one rollout strip per dataset → their file names."""
    figures = [
        vrmse_vs_horizon(
            metrics["curves"], out / "vrmse_vs_horizon.png", title=f"{split} split"
        ).name
    ]
    for name, s in scores.items():
        preds = {m: s.example[m] for m in methods if m in MODEL_METHODS}
        figures.append(
            rollout_strip(
                s.example["truth"],
                preds,
                s.channel_names,
                out / f"rollout_{name}.png",
                title=f"{name}: truth | prediction | error",
            ).name
        )
    return figures


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _decoding(metrics: dict[str, Any]) -> str:
    model = metrics.get("model") or {}
    if model.get("kind") == "diffusion":
        return f"{model['sampling_steps']} {model['sampler']} sampling step(s), noise seed {metrics.get('seed', 0)}"
    return (
        "greedy decoding"
        if not metrics.get("temperature")
        else f"temperature {metrics['temperature']}"
    )


def render_report(metrics: dict[str, Any]) -> str:
    methods = metrics["methods"]
    model_methods = [m for m in methods if m not in BASELINES and m != "persistence"]
    lines = [
        "# Evaluation",
        "",
        f"Model `{metrics['checkpoint']}` on `{metrics['shards']}` ({metrics['split']} split), "
        f"{sum(metrics['n_windows'].values())} windows "
        f"({', '.join(f'{k}: {v}' for k, v in metrics['n_windows'].items())}); "
        f"{_decoding(metrics)}.",
        "",
        "VRMSE is The Well's (per window and field: sqrt(MSE / spatial variance of the truth), in physical units), "
        "here of the k-th predicted frame, averaged over windows. **VRMSE 1.0 is what predicting the spatial mean "
        "scores**: a method above 1 carries no spatial information. Persistence repeats the last context frame; "
        'once persistence is itself above 1 the dynamics have decorrelated at that horizon, and "beating" '
        "persistence there means nothing. Copy-tokens is persistence through the tokenizer; the tokenizer "
        "ceiling decodes the true future's own tokens (no token model can do better).",
        "",
        "## Mean over datasets and fields",
        "",
        "| horizon | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for h in metrics["horizons"]:
        lines.append(
            f"| {h} | "
            + " | ".join(_fmt(metrics["overall"].get(m, {}).get(str(h))) for m in methods)
            + " |"
        )
    for h in metrics["horizons"]:
        lines += [
            "",
            f"## Horizon {h}",
            "",
            "| dataset | field | " + " | ".join(methods) + " | beats persistence |",
            "|---|---|" + "---:|" * len(methods) + "---|",
        ]
        for name, d in metrics["vrmse"].items():
            for c, f in d["fields"].items():
                vals = {m: f.get(m, {}).get(str(h)) for m in methods}
                p = vals.get("persistence")
                verdict = (
                    ", ".join(
                        m
                        for m in model_methods
                        if vals.get(m) is not None and p is not None and vals[m] < p
                    )
                    or "no"
                )
                if p is not None and p > 1.0:
                    verdict += " (persistence > 1: not meaningful)"
                lines.append(
                    f"| {name} | {c} | "
                    + " | ".join(_fmt(vals[m]) for m in methods)
                    + f" | {verdict} |"
                )
    if metrics.get("persistence_above_1"):
        lines += [
            "",
            "Persistence is above 1 (worse than the spatial mean) for: "
            + ", ".join(metrics["persistence_above_1"])
            + ".",
        ]
    acc = metrics.get("token_accuracy", {})
    if acc:
        lines += [
            "",
            "## Token accuracy (fraction of predicted tokens equal to the true frame's own tokens)",
            "",
            "| dataset | method | step 1 | last step |",
            "|---|---|---:|---:|",
        ]
        for name, per in acc.items():
            for m, vals in per.items():
                lines.append(f"| {name} | {m} | {vals[0]:.3f} | {vals[-1]:.3f} |")
    lines += ["", "## Figures", "", "![VRMSE vs horizon](vrmse_vs_horizon.png)", ""]
    lines += [f"![{f}]({f})" for f in metrics.get("figures", []) if f.startswith("rollout_")]
    secs = metrics.get("seconds", {})
    lines += ["", "Seconds per method: " + ", ".join(f"{k} {v}" for k, v in secs.items()) + "."]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text)


# ----------------------------------------------------------------------------------------------
# rollout
def rollout_to_files(
    location: str | Path,
    shards: str | Path,
    horizon: int,
    out: str | Path,
    *,
    split: str = "test",
    max_windows: int | None = None,
    batch_size: int = 32,
    refine: bool | None = None,
    sampling: Sampling | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Roll out on every window; write predictions (safetensors per dataset), strips, metrics.json,
    report.md. ``refine``: None = refined when the model has a refiner (what a user gets by
    default), True = require one."""
    sampling = sampling or Sampling()
    pm = _load(location, refine, tokenizer, device, sampling)
    if refine is None:
        refine = pm.refines_by_default
    method = "ar_refined" if refine else pm.method
    scores, seconds = score_windows(
        pm,
        shards,
        split,
        horizon,
        methods=(method, "persistence"),
        max_windows=max_windows,
        batch_size=batch_size,
        sampling=sampling,
        seed=seed,
        keep_predictions=True,
    )
    out = Path(out)
    files = _write_predictions(scores, method, out)
    summary = summarize(scores, list(range(1, horizon + 1)))
    metrics = {
        "checkpoint": str(location),
        "shards": str(shards),
        "split": split,
        "horizon": horizon,
        "refine": refine,
        "temperature": sampling.ar.temperature,
        "top_k": sampling.ar.top_k,
        "seed": seed,
        "model": pm.describe(),
        "predictions": files,
        "n_windows": summary["n_windows"],
        "curves": summary["curves"],
        "seconds": {m: round(v, 2) for m, v in seconds.items()},
    }
    write_metrics(out / "metrics.json", metrics)
    _write(out / "report.md", render_rollout_report(metrics, list(scores)))
    return metrics


def _write_predictions(scores: dict[str, DatasetScores], method: str, out: Path) -> list[str]:
    """Each dataset's windows (context, truth, prediction) as safetensors, and its strip; → the
    files."""
    files = []
    for name, s in scores.items():
        tensors = {k: torch.cat(v) for k, v in s.predictions.items() if k != "persistence"}
        tensors["prediction"] = tensors.pop(method)
        files.append(
            str(save_predictions(out / "predictions" / f"{name}.safetensors", tensors, s.meta))
        )
        rollout_strip(
            s.example["truth"],
            {method: s.example[method]},
            s.channel_names,
            out / f"rollout_{name}.png",
            title=f"{name}: truth | prediction | error",
        )
    return files


def render_rollout_report(metrics: dict[str, Any], datasets: list[str]) -> str:
    horizon = metrics["horizon"]
    lines = [
        "# Rollout",
        "",
        f"`{metrics['checkpoint']}` on `{metrics['shards']}` ({metrics['split']}), horizon {horizon}, "
        f"{'with' if metrics['refine'] else 'without'} refinement. Predictions: `predictions/<dataset>.safetensors` "
        "(tensors context, truth, prediction [windows, T, C, *space], physical units; windows' meta in the "
        "file's metadata).",
        "",
        "Mean VRMSE per step (1.0 = the spatial mean):",
        "",
        "| dataset | method | " + " | ".join(str(k) for k in range(1, horizon + 1)) + " |",
        "|---|---|" + "---:|" * horizon,
    ]
    for name, per in metrics["curves"].items():
        for m, vals in per.items():
            lines.append(f"| {name} | {m} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    lines += [""] + [f"![{name}](rollout_{name}.png)" for name in datasets]
    return "\n".join(lines) + "\n"


def save_predictions(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: list[dict[str, Any]]
) -> Path:
    """Write ``tensors`` (e.g. context, truth, prediction) as safetensors with the windows' meta as
    JSON."""
    from safetensors.torch import save

    path = Path(path)
    data = save(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={"windows": json.dumps(meta)},
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
