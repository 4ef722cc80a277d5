"""The figures users look at after a rollout or evaluation (matplotlib, Agg backend, PNG, written
atomically).

* rollout strip: one panel per field, columns truth | each method | each method's error, rows the
  rollout steps; one colour scale per field and one zero-centred diverging scale for the errors,
  each with its colour bar; 1D fields as curves, 3D fields as their middle slice;
* VRMSE vs horizon: one panel per dataset, one line per method, the spatial-mean predictor (1.0)
  dashed;
* loss vs step: a training run's learning curves (train and validation loss), e.g. a fine-tune and
  its scratch twin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_pipelines.atomic import pyplot, save_figure

METHOD_STYLE = {  # method → (label, colour, line style)
    "ar": ("AR model", "C0", "-"),
    "ar_refined": ("AR + refiner", "C1", "-"),
    "persistence": ("persistence", "k", "--"),
    "copy_tokens": ("copy tokens", "C7", ":"),
    "tokenizer_ceiling": ("tokenizer ceiling", "C2", "-."),
    "fno": ("FNO", "C3", "-"),
}


def _slice(frame: np.ndarray) -> np.ndarray:
    """One field's frame [*space] → something to draw: 1D stays 1D, 2D as is, 3D its middle
    slice."""
    return frame[frame.shape[0] // 2] if frame.ndim == 3 else frame


def _method_label(method: str) -> str:
    return METHOD_STYLE.get(method, (method,))[0]


def rollout_strip(
    truth: torch.Tensor,
    predictions: dict[str, torch.Tensor],
    channel_names: list[str],
    path: Path,
    title: str = "",
    max_rows: int = 6,
) -> Path:
    """truth [H, C, *space] and predictions {method: [H, C, *space]} of one window → PNG.

    One panel per field, read as a table: columns truth | each method | each method's error, rows
    the rollout steps (at most ``max_rows``, spread from the first to the last). Truth and
    predictions share one colour scale per field (viridis, with its colour bar); errors share one
    diverging scale centred on zero (RdBu, with its colour bar), so steps and methods compare by
    eye. 1D fields are curves (the truth in grey under each prediction), 3D fields their middle
    slice."""
    plt = pyplot()
    truth_np = truth.detach().cpu().float().numpy()
    preds = {k: v.detach().cpu().float().numpy() for k, v in predictions.items()}
    H, methods = truth_np.shape[0], list(preds)
    steps = sorted({int(round(s)) for s in np.linspace(0, H - 1, min(H, max_rows))})
    columns = (
        [("truth", None)] + [("prediction", m) for m in methods] + [("error", m) for m in methods]
    )
    n_rows, n_cols, n_fields = len(steps), len(columns), len(channel_names)
    one_d = truth_np[0, 0].ndim == 1
    cell = (2.2, 1.3) if one_d else (1.55, 1.55)
    fig = plt.figure(
        figsize=(
            cell[0] * n_cols + 1.6,
            n_fields * (cell[1] * n_rows + 0.45) + (0.35 if title else 0),
        ),
        layout="constrained",
    )
    panels = fig.subfigures(n_fields, 1, squeeze=False)[:, 0]
    for c, (panel, name) in enumerate(zip(panels, channel_names)):
        _field_panel(panel, name, truth_np[:, c], preds, c, steps, columns, one_d)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


def _field_panel(
    panel,
    name: str,
    t: np.ndarray,
    preds: dict[str, np.ndarray],
    c: int,
    steps: list[int],
    columns: list[tuple[str, str | None]],
    one_d: bool,
) -> None:
    """One field's table of ``rollout_strip``: truth ``t`` [H, *space] and channel ``c`` of each
    prediction, at each step, with the value and error colour bars."""
    methods = list(preds)
    lo, hi = float(t.min()), float(t.max())
    errors = {m: preds[m][:, c] - t for m in methods}
    err_lim = max([float(np.abs(e).max()) for e in errors.values()] + [1e-12])
    axes = panel.subplots(len(steps), len(columns), squeeze=False, sharex=one_d)
    value_image = error_image = None
    for r, k in enumerate(steps):
        for col, (kind, method) in enumerate(columns):
            ax = axes[r, col]
            img = _slice(
                t[k]
                if kind == "truth"
                else preds[method][k, c]
                if kind == "prediction"
                else errors[method][k]
            )
            if img.ndim == 1:
                if kind == "prediction":
                    ax.plot(_slice(t[k]), color="0.65", lw=0.9)
                ax.plot(img, lw=1.0, color="C3" if kind == "error" else "C0")
                ax.set_ylim(*((-err_lim, err_lim) if kind == "error" else (lo, hi)))
                ax.tick_params(labelsize=7)
                if col not in (0, 1 + len(methods)):
                    ax.tick_params(labelleft=False)
            elif kind == "error":
                error_image = ax.imshow(img, cmap="RdBu_r", vmin=-err_lim, vmax=err_lim)
            else:
                value_image = ax.imshow(img, cmap="viridis", vmin=lo, vmax=hi)
            if img.ndim != 1:
                ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                label = "truth" if kind == "truth" else _method_label(method)
                ax.set_title(f"error: {label}" if kind == "error" else label, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"t+{k + 1}", fontsize=9, rotation=0, ha="right", va="center")
    if value_image is not None:
        bar = panel.colorbar(value_image, ax=axes[:, : 1 + len(methods)], shrink=0.9, pad=0.01)
        bar.ax.tick_params(labelsize=7)
        bar.set_label(name, fontsize=8)
    if error_image is not None:
        bar = panel.colorbar(error_image, ax=axes[:, 1 + len(methods) :], shrink=0.9, pad=0.01)
        bar.ax.tick_params(labelsize=7)
        bar.set_label(f"{name} error", fontsize=8)
    panel.suptitle(name, fontsize=10, fontweight="bold")


def vrmse_vs_horizon(
    curves: dict[str, dict[str, list[float]]], path: Path, title: str = ""
) -> Path:
    """curves {dataset: {method: [VRMSE at step 1..H]}} → one panel per dataset."""
    plt = pyplot()
    names = sorted(curves)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.3), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, values in curves[name].items():
            label, colour, style = METHOD_STYLE.get(method, (method, None, "-"))
            steps = np.arange(1, len(values) + 1)
            ax.plot(steps, values, style, color=colour, marker="o", ms=3, label=label)
        ax.axhline(1.0, color="0.5", lw=0.8, ls=(0, (1, 3)))
        ax.text(1, 1.0, " spatial mean", fontsize=7, color="0.4", va="bottom")
        ax.set_xlabel("rollout step")
        ax.set_xticks(
            steps if len(steps) <= 12 else np.linspace(1, len(steps), 7).round().astype(int)
        )
        ax.set_ylabel("VRMSE (mean over fields)")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def loss_vs_step(runs: dict[str, dict[str, list]], path: Path, title: str = "") -> Path:
    """runs {method: {"train": [(step, loss)], "valid": [(step, loss)]}} → one panel: each
    method's training loss (thin) and validation loss (markers) against optimiser steps, the
    lowest validation loss circled: where the two part, the run fits its training data, not the
    task."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for method, curves in runs.items():
        label, colour, _ = METHOD_STYLE.get(method, (method, None, "-"))
        if curves.get("train"):
            steps, losses = zip(*curves["train"])
            ax.plot(steps, losses, "-", color=colour, lw=1, alpha=0.7, label=f"{label}: train")
        if curves.get("valid"):
            steps, losses = zip(*curves["valid"])
            ax.plot(steps, losses, "--", color=colour, marker="o", ms=3, label=f"{label}: valid")
            best = int(np.argmin(losses))
            ax.plot(steps[best], losses[best], "o", mfc="none", mec=colour, ms=9)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("next-token cross-entropy")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
