"""Figures of probing and steering: probe R² (and regime accuracy) per layer, steering
dose–response."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_pipelines.atomic import pyplot, save_figure


def plot_probe_layers(
    layers: list[str],
    r2: list[float],
    accuracy: list[float],
    baselines: dict[str, dict[str, float]],
    path: str | Path,
    title: str = "",
) -> Path:
    """R² (left) and regime accuracy (right) per layer; baselines as horizontal lines."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    x = range(len(layers))
    labels = [name.replace("blocks.", "b").replace(".resid", "") for name in layers]
    for ax, values, key, ylabel in (
        (axes[0], r2, "r2", "held-out R²"),
        (axes[1], accuracy, "accuracy", "accuracy"),
    ):
        ax.plot(x, values, "o-", color="C0", label="model layer")
        for i, (name, base) in enumerate(baselines.items()):
            if key in base:
                ax.axhline(base[key], color=f"C{i + 1}", ls="--", lw=1, label=name)
        ax.set_xticks(list(x), labels, rotation=30, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(min(0.0, *r2, *(b.get("r2", 0) for b in baselines.values())) - 0.05, 1.02)
    axes[1].legend(fontsize=7, loc="lower right")
    axes[0].set_title("parameter regression", fontsize=9)
    axes[1].set_title("regime classifier", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_dose_response(
    alphas: list[float], curves: dict[str, dict[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """One panel per measured quantity: mean ± std over windows vs α, with Spearman ρ in the panel
    title.

    ``curves``: name → {"mean": [per α], "std": [per α], "spearman": ρ, "reference": optional
    value}."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.3), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        ax.errorbar(alphas, c["mean"], yerr=c.get("std"), fmt="o-", capsize=3)
        for label, value in (c.get("references") or {}).items():
            ax.axhline(value, color="0.5", ls="--", lw=1)
            ax.annotate(label, (alphas[0], value), fontsize=7, color="0.4", va="bottom")
        ax.set_xlabel("steering strength α")
        ax.set_ylabel(name)
        ax.set_title(f"{name}: Spearman ρ = {c['spearman']:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_steered_frames(
    examples: dict[float, Any], channel_names: list[str], path: str | Path, title: str = ""
) -> Path:
    """The first channel of one window's last generated frame for each α ({α: [C, *space]}): a row
    of frames on one colour scale (viridis, colour bar) and, when α = 0 is among them, a row of
    steered − unsteered on a zero-centred diverging scale (colour bar)."""
    import numpy as np

    plt = pyplot()
    alphas = list(examples)
    frames = [np.asarray(examples[a])[0] for a in alphas]
    frames = [f[f.shape[0] // 2] if f.ndim == 3 else f for f in frames]  # 3D: the middle slice
    base = frames[alphas.index(0.0)] if 0.0 in alphas else None
    rows = 1 if base is None else 2
    lo, hi = min(float(f.min()) for f in frames), max(float(f.max()) for f in frames)
    lim = (
        max([float(np.abs(f - base).max()) for f in frames] + [1e-12]) if base is not None else 1.0
    )
    fig, axes = plt.subplots(
        rows,
        len(alphas),
        figsize=(1.9 * len(alphas) + 1.2, 2.1 * rows + 0.4),
        squeeze=False,
        layout="constrained",
    )
    name = channel_names[0]
    for col, (alpha, frame) in enumerate(zip(alphas, frames)):
        panels = [(axes[0, col], frame, "viridis", (lo, hi))]
        if base is not None:
            panels.append((axes[1, col], frame - base, "RdBu_r", (-lim, lim)))
        for ax, img, cmap, (vmin, vmax) in panels:
            if img.ndim == 1:
                ax.plot(img, lw=0.8, color="C3" if cmap == "RdBu_r" else "C0")
                ax.set_ylim(vmin, vmax)
            else:
                ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
                ax.set_xticks([]), ax.set_yticks([])
        axes[0, col].set_title(f"α = {alpha:g}", fontsize=9)
    if frames[0].ndim == 2:
        fig.colorbar(axes[0, -1].get_images()[0], ax=axes[0, :], shrink=0.9).set_label(
            name, fontsize=8
        )
        if base is not None:
            bar = fig.colorbar(axes[1, -1].get_images()[0], ax=axes[1, :], shrink=0.9)
            bar.set_label(f"{name}: steered − α=0", fontsize=8)
    if base is not None:
        axes[1, 0].set_ylabel("steered − (α = 0)", fontsize=9)
    fig.suptitle(f"{title} ({name})" if title else name, fontsize=10)
    return save_figure(fig, path, dpi=100)
