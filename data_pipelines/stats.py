"""Normalisation statistics in The Well's ``stats.yaml`` form, computed in one streaming pass.

``stats.yaml`` maps each key (mean, std, rms, mean_delta, std_delta, rms_delta) to ``{field:
value}`` where the value is a float for a t0 field, a list of ``n_dims`` floats for t1 and an
``n_dims × n_dims`` nested list for t2 — the form ``the_well.data.normalization`` reads.  As in The
Well's published files, the ``*_delta`` keys (statistics of ``x[t+1] - x[t]``) list only
time-varying fields; std is the population std (ddof=0), so ``rms² = std² + mean²``.

The pass reads a bounded chunk of time steps at a time and merges per-chunk (count, mean, M2) with
Chan et al.'s parallel update in float64, so memory stays flat whatever the dataset size.
Statistics are those of the fields as the reader presents them: constant fields count once per
(trajectory, time step) they are broadcast to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from data_pipelines.atomic import atomic_path
from data_pipelines.errors import DataError
from data_pipelines.well_format import component_suffixes
from data_pipelines.well_io import FieldSpec, WellReader, list_split_files

STATS_KEYS = ("mean", "std", "rms", "mean_delta", "std_delta", "rms_delta")
STATS_FILE = "stats.yaml"
# float64 values per chunk (4 MiB; ~4x that at peak): bounds memory of the pass
MAX_CHUNK_VALUES = 1 << 19


@dataclass
class RunningMoments:
    """Per-component count, mean and sum of squared deviations (M2), merged with Chan's update."""

    count: float = 0.0
    mean: np.ndarray | None = None  # [n_components] float64
    m2: np.ndarray | None = None

    def update(self, x: np.ndarray, weight: float = 1.0) -> None:
        """Add ``x [n, n_components]``; ``weight`` counts each row that many times (broadcast
        data)."""
        if x.shape[0] == 0:
            return
        # components first and contiguous: numpy's row reductions are several times faster than
        # reducing axis 0 of a narrow [n, 2] array
        # [n_components, n]; ours to modify
        xt = np.array(x.T, dtype=np.float64, order="C", copy=True)
        n_b = xt.shape[1] * weight
        mean_b = xt.mean(axis=1)
        xt -= mean_b[:, None]
        m2_b = np.einsum("ij,ij->i", xt, xt) * weight
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.square(delta) * (self.count * n_b / n)
        self.count = n

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, std, rms), population std."""
        var = self.m2 / self.count
        return self.mean, np.sqrt(var), np.sqrt(var + np.square(self.mean))


def _to_yaml_value(v: np.ndarray, order: int, n_dims: int) -> float | list:
    if order == 0:
        return float(v[0])
    return np.asarray(v, dtype=np.float64).reshape((n_dims,) * order).tolist()


def compute_stats(
    dataset_dir: str | Path, split: str = "train", max_chunk_values: int = MAX_CHUNK_VALUES
) -> dict:
    """Per-field mean/std/rms of values and of time deltas over every file of ``DIR/data/SPLIT``."""
    files = list_split_files(dataset_dir, split)
    moments: dict[str, RunningMoments] = {}
    deltas: dict[str, RunningMoments] = {}
    layout: list[tuple[str, int, bool]] | None = None
    n_dims = 0
    for path in files:
        with WellReader(path) as r:
            this = [(s.name, s.order, s.time_varying) for s in r.field_specs]
            if layout is None:
                layout, n_dims = this, r.n_spatial_dims
            elif this != layout or r.n_spatial_dims != n_dims:
                raise DataError(
                    f"{path}: fields {this} in {r.n_spatial_dims}D differ from {files[0].name}'s {layout} "
                    f"in {n_dims}D; every file of a split must hold the same fields"
                )
            for spec in r.field_specs:
                _accumulate_field(
                    r,
                    spec,
                    moments.setdefault(spec.name, RunningMoments()),
                    deltas.setdefault(spec.name, RunningMoments()),
                    max_chunk_values,
                )

    stats: dict[str, dict[str, Any]] = {key: {} for key in STATS_KEYS}
    for name, order, time_varying in layout or []:
        for suffix, acc in (("", moments[name]), ("_delta", deltas[name])):
            if acc.mean is None or (suffix and not time_varying):
                continue  # The Well lists no delta stats for constant fields
            for key, value in zip(("mean", "std", "rms"), acc.finish()):
                stats[key + suffix][name] = _to_yaml_value(value, order, n_dims)
    return stats


def _accumulate_field(
    r: WellReader,
    spec: FieldSpec,
    values: RunningMoments,
    deltas: RunningMoments,
    max_chunk_values: int,
) -> None:
    """Stream one field of one file into the accumulators, a chunk of time steps at a time."""
    n_comp = r.n_spatial_dims**spec.order
    stored_space = [s if v else 1 for s, v in zip(r.spatial_shape, spec.dim_varying)]
    # rows a stored value stands for once broadcast: spatial axes stored with size 1, and the
    # trajectory / time axes of a field that does not vary along them
    weight = float(
        np.prod([s for s, v in zip(r.spatial_shape, spec.dim_varying) if not v], initial=1)
    )
    if not spec.sample_varying:
        weight *= r.n_trajectories
    trajectories = range(r.n_trajectories) if spec.sample_varying else range(1)
    values_per_step = int(np.prod(stored_space, initial=1)) * n_comp
    for trajectory in trajectories:
        if not spec.time_varying:
            x = r.read_stored(spec, trajectory, 0, r.n_steps)
            _check_finite(r, spec, x, trajectory, None)
            values.update(x.reshape(-1, n_comp), weight * r.n_steps)
            continue
        chunk = max(1, max_chunk_values // values_per_step)
        for start in range(0, r.n_steps, chunk):
            stop = min(start + chunk, r.n_steps)
            # one extra step so the delta x[stop] - x[stop-1] across the chunk border is counted
            # once
            x = r.read_stored(spec, trajectory, start, min(stop + 1, r.n_steps)).astype(np.float64)
            _check_finite(r, spec, x, trajectory, start)
            values.update(x[: stop - start].reshape(-1, n_comp), weight)
            deltas.update(np.diff(x, axis=0).reshape(-1, n_comp), weight)


def _check_finite(
    r: WellReader, spec: FieldSpec, x: np.ndarray, trajectory: int, start: int | None
) -> None:
    if np.isfinite(x).all():
        return
    where = f"trajectory {trajectory}"
    if start is not None:
        bad_t = np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1))
        where += f", time index {start + int(bad_t[0])}"
    raise DataError(
        f"{r.path}: {spec.location}: NaN/Inf at {where}; statistics would be meaningless"
    )


def write_stats(dataset_dir: str | Path, stats: dict) -> Path:
    """Write ``DIR/stats.yaml`` atomically; returns its path."""
    path = Path(dataset_dir) / STATS_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(stats, default_flow_style=False, sort_keys=True))
    return path


def _is_number_tree(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, list) and len(v) > 0 and all(_is_number_tree(x) for x in v)


def read_stats(dataset_dir: str | Path) -> dict:
    """Read and check ``DIR/stats.yaml`` (or a given ``.yaml`` path); DataError names the file and
    key."""
    path = Path(dataset_dir)
    if path.suffix not in (".yaml", ".yml"):
        path = path / STATS_FILE
    if not path.is_file():
        raise DataError(f"{path}: stats file missing (run `physfm data stats DIR`)")
    try:
        stats = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(stats, dict):
        raise DataError(f"{path}: expected a mapping with keys {list(STATS_KEYS)}")
    for key in STATS_KEYS:
        if key not in stats:
            raise DataError(f"{path}: key {key!r} missing")
        if not isinstance(stats[key], dict):
            raise DataError(f"{path}: {key}: expected a mapping field -> value")
        for name, value in stats[key].items():
            if not _is_number_tree(value):
                raise DataError(
                    f"{path}: {key}.{name}: expected a number or a list of numbers, got {value!r}"
                )
    return stats


def channel_stats(
    stats: dict, fields: list[tuple[str, int]], spatial_dims: list[str]
) -> dict[str, np.ndarray]:
    """Per-channel float64 arrays ``[C]`` for each stats key, in the reader's channel order (t0,
    then t1 components, then t2 components).  Constant fields have no ``*_delta`` entries; they get
    0 there (their deltas are zero) — clip std/rms before dividing."""
    n_dims = len(spatial_dims)
    ordered = sorted(fields, key=lambda f: f[1])  # stable: file order within each tensor order
    out = {}
    for key in STATS_KEYS:
        table = stats.get(key)
        if not isinstance(table, dict):
            raise DataError(f"stats: key {key!r} missing")
        parts = []
        for name, order in ordered:
            n_comp = len(component_suffixes(order, spatial_dims))
            if name not in table:
                if key.endswith("_delta"):
                    parts.append(np.zeros(n_comp))
                    continue
                raise DataError(f"stats: {key}.{name} missing (fields: {[f for f, _ in fields]})")
            value = np.asarray(table[name], dtype=np.float64).reshape(-1)
            if value.size != n_comp:
                raise DataError(
                    f"stats: {key}.{name} has {value.size} values, expected {n_comp} for a t{order} field in {n_dims}D"
                )
            parts.append(value)
        out[key] = np.concatenate(parts) if parts else np.zeros(0)
    return out
