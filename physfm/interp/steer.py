"""Concept directions in the residual stream and the hooks that steer a rollout along them.

Reference method (Fear et al. 2025, "Physics Steering"): capture a layer's activations over windows
of two regimes, z-score each window's activations over (space, channels) per frame, average per
regime and take Δ = mean(feature) − mean(control) — a spatial map [*grid, d]. At rollout, every step
adds α · Δ_tok · ‖h_tok‖ / ‖Δ_tok‖ to each frame token's activation h_tok at that layer (Δ_tok: Δ at
the token's grid position with ``spatial_mode="as-is"``, Δ averaged over space with ``"mean"``), so
α is a fraction of the activation's own norm whatever the layer's scale. Conditioning tokens are
left alone.

``method="pca"``: the first principal axis of paired differences (feature_i − control_i over random
pairs, not centred, so a consistent shift dominates), signed and scaled to agree with the mean
difference's projection on it.

    from physfm.interp.steer import compute_direction, load_direction, steering
    compute_direction("runs/pretrain", "runs/tokens", "nu>=0.01", "nu<0.003", ["blocks.2.resid"], "dir.safetensors")
    with steering(model, load_direction("dir.safetensors"), alpha=0.5):
        new = model.generate_frames(context, 4, dataset_ids)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from data_pipelines.atomic import atomic_path, atomic_write_text
from data_pipelines.errors import DataError, InputError
from physfm.inference.loading import load_model
from physfm.interp.activations import capture_to_disk, model_fingerprint
from physfm.interp.hooks import add_to
from physfm.interp.selection import parse_selection

DIRECTION_FORMAT = "physfm-direction"
Method = Literal["mean-diff", "pca"]


# ---------------------------------------------------------------------------------------------
# arithmetic
def direction_from_samples(
    feature: Tensor, control: Tensor, method: Method = "mean-diff", seed: int = 0
) -> Tensor:
    """Per-window activations feature [Nf, *S], control [Nc, *S] (already z-scored) → Δ [*S]."""
    if feature.shape[1:] != control.shape[1:]:
        raise ValueError(
            f"feature {tuple(feature.shape[1:])} and control {tuple(control.shape[1:])} shapes differ"
        )
    mean_diff = feature.double().mean(0) - control.double().mean(0)
    if method == "mean-diff":
        return mean_diff.float()
    if method != "pca":
        raise InputError(f"method: expected mean-diff or pca, got {method!r}")
    g = torch.Generator().manual_seed(seed)
    n = min(len(feature), len(control))
    pairs = (
        feature[torch.randperm(len(feature), generator=g)[:n]].double()
        - control[torch.randperm(len(control), generator=g)[:n]].double()
    ).reshape(n, -1)
    # [prod(S)] first right singular vector
    axis = torch.linalg.svd(pairs, full_matrices=False).Vh[0]
    projection = float(axis @ mean_diff.reshape(-1))
    # sign and length from the mean difference
    return (axis * projection).reshape(mean_diff.shape).float()


def compute_direction(
    location: str | Path,
    data: str | Path,
    feature: str,
    control: str,
    points: list[str],
    out: str | Path,
    *,
    method: Method = "mean-diff",
    split: str = "train",
    max_windows: int | None = 256,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Capture both selections (z-scored spatial maps), compute Δ per point, save FILE (+
    FILE.json)."""
    parse_selection(feature), parse_selection(control)  # syntax errors before any work
    model, info = load_model(location)  # AR or diffusion (run.json kind)
    info = {**info, "location": str(location)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors, counts = {}, {}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-acts-") as tmp:
        stores = {
            role: capture_to_disk(
                model,
                info,
                data,
                Path(tmp) / role,
                points=points,
                split=split,
                selection=sel,
                pool="zscore_spatial",
                max_windows=max_windows,
                batch_size=batch_size,
            )
            for role, sel in (("feature", feature), ("control", control))
        }
        counts = {role: s.n_samples for role, s in stores.items()}
        datasets = sorted({m["dataset"] for s in stores.values() for m in s.meta()})
        for point in points:
            if method == "mean-diff":  # running sums: one chunk in memory at a time
                means = {role: _streaming_mean(s, point) for role, s in stores.items()}
                tensors[point] = (means["feature"] - means["control"]).float()
            else:
                tensors[point] = direction_from_samples(
                    stores["feature"].load(point), stores["control"].load(point), method, seed
                )
    meta = {
        "format": DIRECTION_FORMAT,
        "version": 1,
        "model_fingerprint": model_fingerprint(model),
        "checkpoint": str(location),
        "points": points,
        "feature": feature,
        "control": control,
        "counts": counts,
        "method": method,
        "pool": "zscore_spatial",
        "data": str(data),
        "split": split,
        "datasets": datasets,
        "grid": list(next(iter(tensors.values())).shape[:-1]),
        "norms": {p: round(float(t.norm()), 4) for p, t in tensors.items()},
        "seed": seed,
    }
    save_direction(out, tensors, meta)
    return meta


def _streaming_mean(store, point: str) -> Tensor:
    total, n = None, 0
    for x, _ in store.iter_chunks(point):
        total = x.double().sum(0) if total is None else total + x.double().sum(0)
        n += len(x)
    return total / n


# ---------------------------------------------------------------------------------------------
# files
@dataclass
class Direction:
    vectors: dict[str, Tensor]  # point → Δ [*grid, d]
    meta: dict[str, Any]

    @property
    def points(self) -> list[str]:
        return list(self.vectors)


def save_direction(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """FILE (safetensors, metadata inside) and FILE.json beside it (the same metadata, for
    people)."""
    from safetensors.torch import save

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(
            save(
                {k: v.contiguous() for k, v in tensors.items()}, metadata={"meta": json.dumps(meta)}
            )
        )
    atomic_write_text(path.with_name(path.name + ".json"), json.dumps(meta, indent=1))
    return path


def load_direction(path: str | Path) -> Direction:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such direction file (make one with `physfm steer direction`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            vectors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # not safetensors, truncated
        raise DataError(f"{path}: unreadable direction file: {err}") from None
    if meta.get("format") != DIRECTION_FORMAT:
        raise DataError(f"{path}: not a physfm direction file (no '{DIRECTION_FORMAT}' metadata)")
    return Direction({p: vectors[p] for p in meta["points"]}, meta)


# ---------------------------------------------------------------------------------------------
# steering
def steering_fn(delta: Tensor, alpha: float, spatial_mode: Literal["as-is", "mean"] = "as-is"):
    """fn(h, positions) for ``hooks.add_to``: α · Δ_tok · ‖h_tok‖ / ‖Δ_tok‖ on frame tokens, 0
    elsewhere.

    delta [*grid, d]; positions [L, 1 + n_axes] (t, x, y, z), t = -1 on conditioning tokens."""
    grid = tuple(delta.shape[:-1])
    flat = delta.reshape(-1, delta.shape[-1]).float()  # [T, d]
    mean = delta.reshape(-1, delta.shape[-1]).float().mean(0, keepdim=True)  # [1, d]
    if spatial_mode not in ("as-is", "mean"):
        raise InputError(f"spatial_mode: expected as-is or mean, got {spatial_mode!r}")

    def fn(h: Tensor, positions: Tensor | None) -> Tensor:
        if positions is None or positions.shape[0] != h.shape[1]:
            raise RuntimeError(
                f"steering: {h.shape[1]} positions in the activation, hook positions "
                f"{None if positions is None else positions.shape[0]}"
            )
        if spatial_mode == "mean":
            d_tok = mean.to(h.device).expand(h.shape[1], -1)
        else:
            idx = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
            for axis, n in enumerate(grid):  # row-major flat index of each token's grid cell
                coord = positions[:, 1 + axis]
                if int(coord.max()) >= n:
                    raise InputError(
                        f"steering: the direction's grid {list(grid)} is smaller than the rollout's; "
                        "use spatial_mode='mean'"
                    )
                idx = idx * n + coord.clamp(min=0)
            d_tok = flat.to(h.device)[idx]  # [L, d]
        frame = (positions[:, 0] >= 0).to(h.device, h.dtype)[None, :, None]  # [1, L, 1]
        scale = h.float().norm(dim=-1, keepdim=True) / d_tok.norm(dim=-1, keepdim=True).clamp_min(
            1e-12
        )
        return (alpha * frame * scale * d_tok[None]).to(h.dtype)

    return fn


@contextmanager
def steering(
    model,
    direction: Direction,
    alpha: float,
    spatial_mode: Literal["as-is", "mean"] = "as-is",
    points: list[str] | None = None,
) -> Iterator[None]:
    """Every forward of ``model`` inside the block is steered at each of the direction's points."""
    with ExitStack() as stack:
        for point in points or direction.points:
            stack.enter_context(
                add_to(model, point, steering_fn(direction.vectors[point], alpha, spatial_mode))
            )
        yield
