"""The figures users look at after a rollout or evaluation (matplotlib, Agg backend, PNG, written atomically).

* rollout strip: per field, rows truth | prediction | error (and refined | its error when given), one
  column per predicted step; 1D fields as curves, 3D fields as their middle slice;
* VRMSE vs horizon: one panel per dataset, one line per method, the spatial-mean predictor (1.0) dashed.
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
    """One field's frame [*space] → something to draw: 1D stays 1D, 2D as is, 3D its middle slice."""
    return frame[frame.shape[0] // 2] if frame.ndim == 3 else frame


def rollout_strip(
    truth: torch.Tensor,
    predictions: dict[str, torch.Tensor],
    channel_names: list[str],
    path: Path,
    title: str = "",
    max_columns: int = 8,
) -> Path:
    """truth [H, C, *space] and predictions {method: [H, C, *space]} of one window → PNG."""
    plt = pyplot()
    truth_np = truth.detach().cpu().float().numpy()
    preds = {k: v.detach().cpu().float().numpy() for k, v in predictions.items()}
    H = truth_np.shape[0]
    steps = sorted({int(round(s)) for s in np.linspace(0, H - 1, min(H, max_columns))})
    rows: list[tuple[int, str, str | None]] = []  # (channel, kind, method)
    for c in range(len(channel_names)):
        rows.append((c, "truth", None))
        for method in preds:
            rows += [(c, "prediction", method), (c, "error", method)]
    fig, axes = plt.subplots(len(rows), len(steps), figsize=(1.6 * len(steps) + 1, 1.5 * len(rows)), squeeze=False)
    for r, (c, kind, method) in enumerate(rows):
        lo, hi = float(truth_np[:, c].min()), float(truth_np[:, c].max())
        err_lim = max(float(np.abs(p[:, c] - truth_np[:, c]).max()) for p in preds.values()) if preds else 1.0
        for col, k in enumerate(steps):
            ax = axes[r, col]
            t = _slice(truth_np[k, c])
            img = (
                t
                if kind == "truth"
                else _slice(preds[method][k, c])
                if kind == "prediction"
                else _slice(preds[method][k, c]) - t
            )
            if img.ndim == 1:
                if kind == "prediction":
                    ax.plot(t, color="0.6", lw=0.8)
                ax.plot(img, lw=0.8, color="C3" if kind == "error" else "C0")
                ax.set_ylim(*((-err_lim, err_lim) if kind == "error" else (lo, hi)))
            else:
                if kind == "error":
                    ax.imshow(img, cmap="RdBu_r", vmin=-err_lim, vmax=err_lim)
                else:
                    ax.imshow(img, cmap="viridis", vmin=lo, vmax=hi)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t+{k + 1}", fontsize=8)
            if col == 0:
                label = METHOD_STYLE.get(method, (method,))[0] if method else ""
                ax.set_ylabel(f"{channel_names[c]}\n{kind}" + (f"\n{label}" if label else ""), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=70)


def vrmse_vs_horizon(curves: dict[str, dict[str, list[float]]], path: Path, title: str = "") -> Path:
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
        ax.set_ylabel("VRMSE (mean over fields)")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
