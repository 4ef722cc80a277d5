"""Tokenizer evaluation: per-dataset, per-field VRMSE and PSNR in physical units, code usage, perplexity,
the pooling baseline beside them, reconstruction PNGs, ``metrics.json`` and ``report.md``.

The baseline is the cheapest honest compressor at the same number of latent values: average-pool each
frame and field down to a grid holding as many (unquantised!) floats as the tokenizer's latent has FSQ
values (``T' * prod(space') * len(levels)`` per window), then linearly interpolate back up.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data_pipelines.errors import DataError
from tokenizer.metrics import CodeStats, psnr, vrmse
from tokenizer.model import Tokenizer


def pool_side(tok: Tokenizer, n_frames: int, n_channels: int, spatial_shape: tuple[int, ...]) -> list[int]:
    """Pooled grid with (about) as many values per frame and field as the tokenizer's latent per frame."""
    grid = tok.token_grid(n_frames, spatial_shape)
    latent_values = math.prod(grid) * len(tok.cfg.levels)
    per_axis = (latent_values / (n_frames * n_channels * math.prod(spatial_shape))) ** (1 / len(spatial_shape))
    return [max(1, min(s, round(s * per_axis))) for s in spatial_shape]


def pool_baseline(x: torch.Tensor, pooled_shape: list[int]) -> torch.Tensor:
    """x [B, T, C, *space] → average-pool each frame to ``pooled_shape``, then (bi/tri)linear back up."""
    n = x.ndim - 3
    frames = x.flatten(0, 1)  # [(B T), C, *space]
    small = F.adaptive_avg_pool1d(frames, pooled_shape) if n == 1 else (
        F.adaptive_avg_pool2d(frames, pooled_shape) if n == 2 else F.adaptive_avg_pool3d(frames, pooled_shape))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[n]
    up = F.interpolate(small, size=tuple(x.shape[3:]), mode=mode, align_corners=False)
    return up.unflatten(0, x.shape[:2])


@torch.no_grad()
def reconstruct(tok: Tokenizer, window: torch.Tensor, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Physical-unit window [B, T, C, *space] → (physical-unit reconstruction, token ids)."""
    z = tok.normalize(window, dataset)
    recon, ids = tok(z, dataset)
    return tok.denormalize(recon, dataset), ids


def evaluate_tokenizer(
    ckpt: str | Path,
    shards: str | Path,
    out_dir: str | Path,
    split: str = "valid",
    batch_size: int = 8,
    max_batches: int | None = None,
    n_plots: int = 2,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a shard split; writes ``metrics.json``, ``report.md``, PNGs; returns metrics."""
    from data_pipelines.loader import make_loader
    from data_pipelines.shards import read_manifest
    from tokenizer.checkpoint import fingerprint, load_tokenizer

    tok = load_tokenizer(ckpt)
    manifest = read_manifest(shards)
    unknown = sorted(set(manifest["datasets"]) - set(tok.datasets))
    if unknown:
        raise DataError(f"{shards}: dataset {unknown[0]!r} is unknown to tokenizer {ckpt} "
                        f"(knows: {', '.join(sorted(tok.datasets))}); train a head for it first")
    for name, entry in manifest["datasets"].items():
        if list(entry["channel_names"]) != tok.datasets[name].channel_names:
            raise DataError(f"{shards}: dataset {name!r} has channels {entry['channel_names']}, the tokenizer "
                            f"expects {tok.datasets[name].channel_names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = tok.cfg.n_spatial_dims
    sums: dict[str, dict[str, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    codes = {name: CodeStats(tok.fsq.codebook_size) for name in manifest["datasets"]}
    combined = CodeStats(tok.fsq.codebook_size)
    plotted: dict[str, int] = {}
    loader = make_loader(shards, split, batch_size, shuffle=False, normalize=False)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        name = batch["dataset"]
        window = torch.cat([batch["input"], batch["output"]], dim=1).float()  # [B, T, C, *space]
        recon, ids = reconstruct(tok, window, name)
        side = pool_side(tok, window.shape[1], window.shape[2], tuple(window.shape[3:]))
        base = pool_baseline(window, side)
        acc = sums.setdefault(name, {k: torch.zeros(window.shape[2], dtype=torch.float64)
                                     for k in ("vrmse", "psnr", "baseline_vrmse")})
        # per sample, frame and field → summed over samples and frames
        acc["vrmse"] += vrmse(recon, window, n).double().sum(dim=(0, 1))
        acc["psnr"] += psnr(recon, window, n).double().sum(dim=(0, 1))
        acc["baseline_vrmse"] += vrmse(base, window, n).double().sum(dim=(0, 1))
        counts[name] = counts.get(name, 0) + window.shape[0] * window.shape[1]
        codes[name].update(ids)
        combined.update(ids)
        if plotted.get(name, 0) < n_plots:
            plot_reconstruction(window[0], recon[0], tok.datasets[name].channel_names,
                                out_dir / f"recon_{name}_{plotted.get(name, 0)}.png", title=f"{name} ({split})")
            plotted[name] = plotted.get(name, 0) + 1
    if not counts:
        raise DataError(f"{shards}: the {split!r} split yielded no windows")

    datasets: dict[str, Any] = {}
    for name, acc in sums.items():
        channels = tok.datasets[name].channel_names
        fields = {c: {k: float(acc[k][j] / counts[name]) for k in acc} for j, c in enumerate(channels)}
        datasets[name] = {"fields": fields, "n_frames": counts[name], **codes[name].summary()}
    every = [f for d in datasets.values() for f in d["fields"].values()]
    metrics = {
        "checkpoint": str(ckpt), "fingerprint": fingerprint(ckpt), "shards": str(shards), "split": split,
        "codebook_size": tok.fsq.codebook_size, "levels": tok.cfg.levels,
        "token_grid": {name: list(tok.token_grid(manifest["n_input"] + manifest["n_output"],
                                                 tuple(manifest["datasets"][name]["spatial_shape"])))
                       for name in datasets},
        "overall": {
            "vrmse_mean": sum(f["vrmse"] for f in every) / len(every),
            "vrmse_max": max(f["vrmse"] for f in every),
            "psnr_mean": sum(f["psnr"] for f in every) / len(every),
            "baseline_vrmse_max": max(f["baseline_vrmse"] for f in every),
            "ratio_to_baseline_max": max(f["vrmse"] / max(f["baseline_vrmse"], 1e-12) for f in every),
            **combined.summary(),
        },
        "datasets": datasets,
    }
    _write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    _write_atomic(out_dir / "report.md", render_report(metrics))
    return metrics


def render_report(metrics: dict[str, Any]) -> str:
    o = metrics["overall"]
    lines = [
        "# Tokenizer evaluation", "",
        f"Checkpoint `{metrics['checkpoint']}` (fingerprint `{metrics['fingerprint'][:12]}`), "
        f"shards `{metrics['shards']}`, split `{metrics['split']}`.",
        f"FSQ levels {metrics['levels']} ({metrics['codebook_size']} codes).", "",
        f"Overall: mean VRMSE {o['vrmse_mean']:.4f}, worst field {o['vrmse_max']:.4f} "
        f"(pooling baseline worst {o['baseline_vrmse_max']:.4f}); code usage {o['code_usage']:.1%}, "
        f"perplexity {o['perplexity']:.1f}.", "",
        "VRMSE is The Well's (per sample and field, physical units; 1.0 = predicting the spatial mean). "
        "The baseline average-pools to the same number of latent values and interpolates back up.", "",
        "| dataset | field | VRMSE | baseline VRMSE | ratio | PSNR (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in metrics["datasets"].items():
        for field, f in d["fields"].items():
            ratio = f["vrmse"] / max(f["baseline_vrmse"], 1e-12)
            lines.append(f"| {name} | {field} | {f['vrmse']:.4f} | {f['baseline_vrmse']:.4f} | {ratio:.2f} | "
                         f"{f['psnr']:.1f} |")
    lines += ["", "| dataset | token grid | code usage | perplexity | frames |", "|---|---|---|---|---|"]
    for name, d in metrics["datasets"].items():
        grid = "×".join(map(str, metrics["token_grid"][name]))
        lines.append(f"| {name} | {grid} | {d['code_usage']:.1%} | {d['perplexity']:.1f} | {d['n_frames']} |")
    lines += ["", "Reconstructions (last frame: original | reconstruction | error): `recon_*.png`.", ""]
    return "\n".join(lines)


def plot_reconstruction(true: torch.Tensor, recon: torch.Tensor, channel_names: list[str], path: Path,
                        title: str = "") -> None:
    """One window's last frame, per field: original | reconstruction | error. 1D as curves, 3D as mid-slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame_t, frame_r = true[-1].cpu().numpy(), recon[-1].cpu().numpy()  # [C, *space]
    n = frame_t.ndim - 1
    fig, axes = plt.subplots(len(channel_names), 3, figsize=(9, 2.8 * len(channel_names)), squeeze=False)
    for c, name in enumerate(channel_names):
        t, r = frame_t[c], frame_r[c]
        if n == 3:
            t, r = t[t.shape[0] // 2], r[r.shape[0] // 2]
        panels = [(t, "original"), (r, "reconstruction"), (r - t, "error")]
        for k, (img, label) in enumerate(panels):
            ax = axes[c, k]
            if n == 1:
                ax.plot(img)
            else:
                lim = (t.min(), t.max()) if k < 2 else (None, None)
                im = ax.imshow(img, cmap="RdBu_r" if k == 2 else "viridis", vmin=lim[0], vmax=lim[1])
                fig.colorbar(im, ax=ax, fraction=0.046)
                ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name}: {label}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def _write_atomic(path: Path, text: str) -> None:
    from data_pipelines.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
