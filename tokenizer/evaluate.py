"""Tokenizer evaluation: per-dataset, per-field VRMSE and PSNR in physical units, code usage,
perplexity, the pooling baseline beside them, reconstruction PNGs, ``metrics.json`` and
``report.md``.

Baselines: the cheapest honest compressors at the tokenizer's latent size, each frame average-pooled
then (bi/tri)linearly interpolated back up, with unquantised floats:

* ``baseline_vrmse`` — pooled onto the token grid (by the spatial compression per axis): one float
  per field per token position, i.e. ``C x 32`` bits where the token has ``log2(codebook)`` (~10)
  bits;
* ``baseline_latent_vrmse`` — stricter: pooled to as many floats per frame as the latent has FSQ
  values (``len(levels)`` per token position, shared among the fields). Where that is as many floats
  as the input has (e.g. one 1D field at 4x with 4 FSQ values), this "baseline" is lossless;
  ``pool_shapes`` in each dataset's metrics shows it.

A conditional tokenizer (``model.conditional``) adds, per field, the figures that bound a
forecaster: ``conditional_vrmse`` (frames t > 0 decoded from their tokens given the TRUE frame t -
1: the ceiling of a model that predicts one frame's tokens), ``persistence_vrmse`` beside it
(x_{t-1} as the prediction of x_t, the same frames), ``key_vrmse`` (frame 0, coded on its own) and
``closed_loop_vrmse`` (frames t > 0 decoded from the window's tokens alone, each decoded frame
conditioning the next: drift of re-decoding a window) and ``closed_loop_encoded_vrmse`` (the same
for tokens coded closed loop, ``encode(..., closed_loop=True)``). ``vrmse`` stays the mean over all
frames, teacher-forced.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data_pipelines.atomic import atomic_write_text, pyplot, save_figure
from data_pipelines.errors import DataError
from data_pipelines.run_record import write_metrics
from tokenizer.metrics import CodeStats, psnr, vrmse
from tokenizer.model import Tokenizer


def pool_shape_tokens(tok: Tokenizer, spatial_shape: tuple[int, ...]) -> list[int]:
    """The token grid's spatial shape: one pooled value per field per token position."""
    return [s // tok.cfg.spatial_compression for s in spatial_shape]


def pool_shape_latent(
    tok: Tokenizer, n_frames: int, n_channels: int, spatial_shape: tuple[int, ...]
) -> list[int]:
    """Pooled grid with (about) as many values per frame, over all fields, as the latent has FSQ
    values."""
    grid = tok.token_grid(n_frames, spatial_shape)
    latent_values = math.prod(grid) * len(tok.cfg.levels)
    per_axis = (latent_values / (n_frames * n_channels * math.prod(spatial_shape))) ** (
        1 / len(spatial_shape)
    )
    return [max(1, min(s, round(s * per_axis))) for s in spatial_shape]


def pool_baseline(x: torch.Tensor, pooled_shape: list[int]) -> torch.Tensor:
    """x [B, T, C, *space] → average-pool each frame to ``pooled_shape``, then (bi/tri)linear back
    up."""
    n = x.ndim - 3
    frames = x.flatten(0, 1)  # [(B T), C, *space]
    small = (
        F.adaptive_avg_pool1d(frames, pooled_shape)
        if n == 1
        else (
            F.adaptive_avg_pool2d(frames, pooled_shape)
            if n == 2
            else F.adaptive_avg_pool3d(frames, pooled_shape)
        )
    )
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[n]
    up = F.interpolate(small, size=tuple(x.shape[3:]), mode=mode, align_corners=False)
    return up.unflatten(0, x.shape[:2])


@torch.no_grad()
def reconstruct(
    tok: Tokenizer, window: torch.Tensor, dataset: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Physical-unit window [B, T, C, *space] → (physical-unit reconstruction, token ids); with
    skip decisions (model.skip_coding) the ids and reconstruction are the ones they choose."""
    z = tok.normalize(window, dataset)
    recon, ids = tok.reconstruct(z, dataset) if tok.cfg.skip_coding else tok(z, dataset)
    return tok.denormalize(recon, dataset), ids


CONDITIONAL_KEYS = (
    "key_vrmse",
    "conditional_vrmse",
    "persistence_vrmse",
    "closed_loop_vrmse",
    "closed_loop_encoded_vrmse",
)


@dataclasses.dataclass
class DatasetScores:
    """One dataset's running sums (per field, float64) over the windows scored so far."""

    codes: CodeStats
    pool_shapes: dict[str, list[int]]
    sums: dict[str, torch.Tensor]
    n_frames: int = 0
    # params key → [summed VRMSE [C], windows]
    by_params: dict[str, list] = dataclasses.field(default_factory=dict)
    # conditional tokenizers only
    cond_sums: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    n_key: int = 0  # key frames scored (conditional tokenizers)
    n_cond: int = 0  # conditional frames scored

    @classmethod
    def start(cls, tok: Tokenizer, window: torch.Tensor) -> DatasetScores:
        space = tuple(window.shape[3:])
        shapes = {
            "spatial": list(space),
            "tokens": pool_shape_tokens(tok, space),
            "latent": pool_shape_latent(tok, window.shape[1], window.shape[2], space),
        }
        keys = ("vrmse", "psnr", "baseline_vrmse", "baseline_latent_vrmse")
        sums = {k: torch.zeros(window.shape[2], dtype=torch.float64) for k in keys}
        return cls(CodeStats(tok.fsq.codebook_size), shapes, sums)

    def add(
        self, tok: Tokenizer, name: str, window, recon, ids, metas: list[dict[str, Any]]
    ) -> None:
        """One batch: window and recon [B, T, C, *space] physical, ids its tokens, metas per
        window."""
        n = tok.cfg.n_spatial_dims
        base = pool_baseline(window, self.pool_shapes["tokens"])
        base_latent = pool_baseline(window, self.pool_shapes["latent"])
        # per sample, frame and field → summed over samples and frames
        per_sample = vrmse(recon, window, n).double()  # [B, T, C]
        self.sums["vrmse"] += per_sample.sum(dim=(0, 1))
        for meta, value in zip(metas, per_sample.mean(dim=1)):  # by simulation parameters
            key = ",".join(f"{k}={v:.6g}" for k, v in sorted(meta.get("params", {}).items()))
            group = self.by_params.setdefault(key, [torch.zeros_like(value), 0])
            group[0] += value
            group[1] += 1
        self.sums["psnr"] += psnr(recon, window, n).double().sum(dim=(0, 1))
        self.sums["baseline_vrmse"] += vrmse(base, window, n).double().sum(dim=(0, 1))
        self.sums["baseline_latent_vrmse"] += vrmse(base_latent, window, n).double().sum(dim=(0, 1))
        self.n_frames += window.shape[0] * window.shape[1]
        if tok.cfg.conditional and window.shape[1] > 1:
            self.add_conditional(tok, name, window, ids, per_sample)
        self.codes.update(ids)

    def add_conditional(
        self, tok: Tokenizer, name: str, window, ids, per_sample: torch.Tensor
    ) -> None:
        """A conditional tokenizer's figures: key vs conditional frames, persistence, closed-loop
        decoding."""
        n = tok.cfg.n_spatial_dims
        closed = tok.denormalize(tok.decode(ids, name), name)
        z = tok.normalize(window, name)
        closed_enc = tok.denormalize(tok.decode(tok.encode(z, name, closed_loop=True), name), name)
        if not self.cond_sums:
            self.cond_sums = {
                k: torch.zeros(window.shape[2], dtype=torch.float64) for k in CONDITIONAL_KEYS
            }
        cacc = self.cond_sums
        cacc["key_vrmse"] += per_sample[:, 0].sum(dim=0)
        cacc["conditional_vrmse"] += per_sample[:, 1:].sum(dim=(0, 1))
        cacc["persistence_vrmse"] += (
            vrmse(window[:, :-1], window[:, 1:], n).double().sum(dim=(0, 1))
        )
        cacc["closed_loop_vrmse"] += vrmse(closed[:, 1:], window[:, 1:], n).double().sum(dim=(0, 1))
        cacc["closed_loop_encoded_vrmse"] += (
            vrmse(closed_enc[:, 1:], window[:, 1:], n).double().sum(dim=(0, 1))
        )
        self.n_key += window.shape[0]
        self.n_cond += window.shape[0] * (window.shape[1] - 1)

    def summary(self, channels: list[str]) -> dict[str, Any]:
        """Per-field means, the pooling shapes, code usage, and VRMSE per parameter set when there
        are several."""
        acc = self.sums
        fields = {
            c: {k: float(acc[k][j] / self.n_frames) for k in acc} for j, c in enumerate(channels)
        }
        for j, c in enumerate(channels):
            for k, total in self.cond_sums.items():
                fields[c][k] = float(total[j] / (self.n_key if k == "key_vrmse" else self.n_cond))
        out = {
            "fields": fields,
            "n_frames": self.n_frames,
            "pool_shapes": self.pool_shapes,
            **self.codes.summary(),
        }
        if len(self.by_params) > 1:  # e.g. NS at two viscosities: which regime is hard?
            out["vrmse_by_params"] = {
                key: dict(zip(channels, (total / count).tolist()))
                for key, (total, count) in self.by_params.items()
            }
        return out


def overall_scores(datasets: dict[str, Any], combined: CodeStats) -> dict[str, Any]:
    """The headline figures over every dataset and field (mean and worst), code usage over all
    datasets."""
    every = [f for d in datasets.values() for f in d["fields"].values()]
    return {
        "vrmse_mean": sum(f["vrmse"] for f in every) / len(every),
        "vrmse_max": max(f["vrmse"] for f in every),
        "psnr_mean": sum(f["psnr"] for f in every) / len(every),
        "baseline_vrmse_max": max(f["baseline_vrmse"] for f in every),
        "ratio_to_baseline_max": max(f["vrmse"] / max(f["baseline_vrmse"], 1e-12) for f in every),
        **combined.summary(),
        **(
            {
                f"{k}_{agg}": value
                for k in ("conditional_vrmse", "persistence_vrmse", "key_vrmse")
                for agg, value in (
                    ("mean", sum(f[k] for f in every) / len(every)),
                    ("max", max(f[k] for f in every)),
                )
            }
            if every and "conditional_vrmse" in every[0]
            else {}
        ),
    }


def evaluate_tokenizer(
    ckpt: str | Path,
    shards: str | Path,
    out_dir: str | Path,
    split: str = "valid",
    batch_size: int = 8,
    max_batches: int | None = None,
    n_plots: int = 2,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a shard split; writes ``metrics.json``, ``report.md``, PNGs; returns
    metrics. ``max_batches`` caps the batches of *each* dataset: the loader yields one dataset's
    windows after the other's, so a cap on the total would score the first datasets only and leave
    the rest out of the headline ``vrmse_max``."""
    from data_pipelines.loader import make_loader
    from data_pipelines.manifest import Manifest
    from tokenizer.checkpoint import fingerprint, load_tokenizer
    from tokenizer.encode import check_datasets

    tok = load_tokenizer(ckpt)
    manifest = Manifest.load(shards)
    check_datasets(tok, manifest, shards)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores: dict[str, DatasetScores] = {}
    combined = CodeStats(tok.fsq.codebook_size)
    plotted: dict[str, int] = {}
    loader = make_loader(shards, split, batch_size, shuffle=False, normalize=False)
    scored: dict[str, int] = {}  # batches per dataset
    for batch in loader:
        name = batch["dataset"]
        if max_batches is not None:
            if all(scored.get(d, 0) >= max_batches for d in manifest.datasets):
                break
            if scored.get(name, 0) >= max_batches:
                continue
        scored[name] = scored.get(name, 0) + 1
        window = torch.cat([batch["input"], batch["output"]], dim=1).float()  # [B, T, C, *space]
        recon, ids = reconstruct(tok, window, name)
        if name not in scores:
            scores[name] = DatasetScores.start(tok, window)
        scores[name].add(tok, name, window, recon, ids, batch["meta"])
        combined.update(ids)
        if plotted.get(name, 0) < n_plots:
            plot_reconstruction(
                window[0],
                recon[0],
                tok.datasets[name].channel_names,
                out_dir / f"recon_{name}_{plotted.get(name, 0)}.png",
                title=f"{name} ({split})",
            )
            plotted[name] = plotted.get(name, 0) + 1
    if not scores:
        raise DataError(f"{shards}: the {split!r} split yielded no windows")

    datasets = {name: s.summary(tok.datasets[name].channel_names) for name, s in scores.items()}
    metrics = {
        "checkpoint": str(ckpt),
        "fingerprint": fingerprint(ckpt),
        "shards": str(shards),
        "split": split,
        "codebook_size": tok.fsq.codebook_size,
        "levels": tok.cfg.levels,
        **({"conditional": True, "no_change_id": tok.no_change_id} if tok.cfg.conditional else {}),
        "token_grid": {
            name: list(
                tok.token_grid(
                    manifest.window.length, tuple(manifest.dataset(name).spatial_shape or ())
                )
            )
            for name in datasets
        },
        "overall": overall_scores(datasets, combined),
        "datasets": datasets,
    }
    write_metrics(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "report.md", render_report(metrics))
    return metrics


def render_report(metrics: dict[str, Any]) -> str:
    o = metrics["overall"]
    lines = [
        "# Tokenizer evaluation",
        "",
        f"Checkpoint `{metrics['checkpoint']}` (fingerprint `{metrics['fingerprint'][:12]}`), "
        f"shards `{metrics['shards']}`, split `{metrics['split']}`.",
        f"FSQ levels {metrics['levels']} ({metrics['codebook_size']} codes).",
        "",
        f"Overall: mean VRMSE {o['vrmse_mean']:.4f}, worst field {o['vrmse_max']:.4f} "
        f"(pooling baseline worst {o['baseline_vrmse_max']:.4f}); code usage {o['code_usage']:.1%}, "
        f"perplexity {o['perplexity']:.1f}.",
        "",
        "VRMSE is The Well's (per sample and field, physical units; 1.0 = predicting the spatial mean). "
        "Baselines average-pool each frame and interpolate back up, keeping unquantised floats: *pool* onto the "
        "token grid (one float per field per token), *pool-latent* to as many floats as the latent has FSQ "
        "values.",
        "",
        "| dataset | field | VRMSE | pool VRMSE | ratio | pool-latent VRMSE | PSNR (dB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in metrics["datasets"].items():
        for field, f in d["fields"].items():
            ratio = f["vrmse"] / max(f["baseline_vrmse"], 1e-12)
            lines.append(
                f"| {name} | {field} | {f['vrmse']:.4f} | {f['baseline_vrmse']:.4f} | {ratio:.2f} | "
                f"{f['baseline_latent_vrmse']:.4f} | {f['psnr']:.1f} |"
            )
    if "conditional_vrmse_max" in o:
        lines += [
            "",
            "Conditional tokenizer: frame 0 of a window is a key frame; frame t > 0 is coded given frame t - 1. "
            "*given true prev* = frames t > 0 decoded given the true previous frame (a one-step forecaster's "
            "ceiling); *persistence* = the previous frame as the prediction; *closed loop* = the window decoded "
            "from its (open-loop) tokens alone; *closed-loop coded* = the same for tokens coded given the decoded "
            "previous frame.",
            "",
            "| dataset | field | given true prev | persistence | key frame | closed loop | closed-loop coded |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, d in metrics["datasets"].items():
            for field, f in d["fields"].items():
                if "conditional_vrmse" in f:
                    lines.append(
                        f"| {name} | {field} | {f['conditional_vrmse']:.4f} | {f['persistence_vrmse']:.4f} | "
                        f"{f['key_vrmse']:.4f} | {f['closed_loop_vrmse']:.4f} | "
                        f"{f['closed_loop_encoded_vrmse']:.4f} |"
                    )
    lines += [
        "",
        "| dataset | token grid | code usage | perplexity | frames |",
        "|---|---|---|---|---|",
    ]
    for name, d in metrics["datasets"].items():
        grid = "×".join(map(str, metrics["token_grid"][name]))
        lines.append(
            f"| {name} | {grid} | {d['code_usage']:.1%} | {d['perplexity']:.1f} | {d['n_frames']} |"
        )
    lines += [
        "",
        "Reconstructions (last frame: original | reconstruction | error): `recon_*.png`.",
        "",
    ]
    return "\n".join(lines)


def plot_reconstruction(
    true: torch.Tensor, recon: torch.Tensor, channel_names: list[str], path: Path, title: str = ""
) -> None:
    """One window's last frame, per field: original | reconstruction | error. 1D as curves, 3D as
    mid-slices."""
    plt = pyplot()
    frame_t, frame_r = true[-1].cpu().numpy(), recon[-1].cpu().numpy()  # [C, *space]
    n = frame_t.ndim - 1
    fig, axes = plt.subplots(
        len(channel_names), 3, figsize=(9, 2.8 * len(channel_names)), squeeze=False
    )
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
                err = float(abs(r - t).max()) or 1e-12  # errors on a zero-centred scale
                lim = (t.min(), t.max()) if k < 2 else (-err, err)
                im = ax.imshow(
                    img, cmap="RdBu_r" if k == 2 else "viridis", vmin=lim[0], vmax=lim[1]
                )
                fig.colorbar(im, ax=ax, fraction=0.046)
                ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name}: {label}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
