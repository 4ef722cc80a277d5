"""Figures of probing and steering: probe R² (and regime accuracy) per layer, steering dose–response."""

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
    for ax, values, key, ylabel in ((axes[0], r2, "r2", "held-out R²"), (axes[1], accuracy, "accuracy", "accuracy")):
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
    """One panel per measured quantity: mean ± std over windows vs α, with Spearman ρ in the panel title.

    ``curves``: name → {"mean": [per α], "std": [per α], "spearman": ρ, "reference": optional value}."""
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
    """The first channel of one window's last generated frame for each α ({α: [C, *space]}), shared colour scale."""
    import numpy as np

    plt = pyplot()
    alphas = list(examples)
    frames = [np.asarray(examples[a])[0] for a in alphas]
    lo, hi = min(float(f.min()) for f in frames), max(float(f.max()) for f in frames)
    fig, axes = plt.subplots(1, len(alphas), figsize=(1.9 * len(alphas) + 0.5, 2.3), squeeze=False)
    for ax, alpha, frame in zip(axes[0], alphas, frames):
        if frame.ndim == 1:
            ax.plot(frame, lw=0.8)
            ax.set_ylim(lo, hi)
        else:
            ax.imshow(frame if frame.ndim == 2 else frame[frame.shape[0] // 2], cmap="RdBu_r", vmin=lo, vmax=hi)
        ax.set_title(f"α = {alpha:g}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} ({channel_names[0]})" if title else channel_names[0], fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
