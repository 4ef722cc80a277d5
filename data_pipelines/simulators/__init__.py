"""Built-in simulators that write datasets in The Well layout.

Each system lives in its own module (equations, method and the reasons for its defaults are in the
module docstring) and is registered here as a :class:`SystemSpec`::

    from data_pipelines.simulators import SIMULATORS, parse_sweep, simulate_dataset
    simulate_dataset("navier_stokes2d", "data/ns", params={"nu": parse_sweep("log:1e-3:1e-2:16")})

``simulate_dataset`` runs every combination (cartesian product) of the parameter values, one The
Well file per combination and split — ``DIR/data/{train,valid,test}/SYSTEM_NAME_VALUE....hdf5`` —
then writes ``DIR/stats.yaml``.  Trajectories differ in their random initial conditions; for a given
seed trajectory i starts from the same initial condition at every parameter value, so the parameter
is the only difference between files (what probing and steering want), and trajectory i falls in the
same split everywhere (no initial condition of the test split is ever seen in training).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.simulators import (
    advection_diffusion2d,
    burgers1d,
    cahn_hilliard2d,
    euler2d,
    gray_scott2d,
    gray_scott3d,
    kdv1d,
    navier_stokes2d,
    navier_stokes3d,
    rayleigh_benard2d,
    shallow_water2d,
    shear_flow2d,
    swift_hohenberg2d,
    wave2d,
)
from data_pipelines.simulators.common import SystemSpec, persistence_vrmse
from data_pipelines.well_format import WellData

SIMULATORS: dict[str, SystemSpec] = {
    spec.name: spec
    for spec in (
        burgers1d.SPEC,
        navier_stokes2d.SPEC,
        gray_scott2d.SPEC,
        wave2d.SPEC,
        shear_flow2d.SPEC,
        rayleigh_benard2d.SPEC,
        shallow_water2d.SPEC,
        euler2d.SPEC,
        navier_stokes3d.SPEC,
        kdv1d.SPEC,
        cahn_hilliard2d.SPEC,
        swift_hohenberg2d.SPEC,
        advection_diffusion2d.SPEC,
        gray_scott3d.SPEC,
    )
}
SPLITS = ("train", "valid", "test")
MAX_BATCH = 16  # trajectories simulated together; bounds memory and fixes the seeding of each chunk

__all__ = [
    "SIMULATORS",
    "SystemSpec",
    "get_system",
    "parameter_grid",
    "parse_sweep",
    "persistence_vrmse",
    "simulate_dataset",
    "simulate_trajectories",
    "split_counts",
]


def get_system(name: str) -> SystemSpec:
    if name not in SIMULATORS:
        raise DataError(f"unknown system {name!r}; built-in systems: {', '.join(SIMULATORS)}")
    return SIMULATORS[name]


def parse_sweep(text: str) -> list[float]:
    """``log:LO:HI:N`` (log-uniform, both ends included) or ``lin:LO:HI:N`` → N values."""
    parts = text.split(":")
    if len(parts) != 4 or parts[0] not in ("log", "lin"):
        raise DataError(f"sweep {text!r}: expected log:LO:HI:N or lin:LO:HI:N")
    try:
        lo, hi, n = float(parts[1]), float(parts[2]), int(parts[3])
    except ValueError:
        raise DataError(f"sweep {text!r}: LO and HI must be numbers and N an integer") from None
    if n < 1:
        raise DataError(f"sweep {text!r}: N must be at least 1")
    if parts[0] == "log":
        if lo <= 0 or hi <= 0:
            raise DataError(f"sweep {text!r}: a log sweep needs LO and HI > 0")
        return np.geomspace(lo, hi, n).tolist()
    return np.linspace(lo, hi, n).tolist()


def parameter_grid(
    spec: SystemSpec, params: dict[str, list[float]] | None
) -> list[dict[str, float]]:
    """Every combination of the given values; parameters not given take their default value
    lists."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.default_params))
    if unknown:
        raise DataError(
            f"{spec.name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(spec.default_params)}"
        )
    values = {}
    for name, default in spec.default_params.items():
        given = params.get(name, default)
        given = [given] if np.isscalar(given) else list(given)
        if not given:
            raise DataError(f"{spec.name}: parameter {name} has no values")
        values[name] = [float(v) for v in given]
        bad = [v for v in values[name] if not math.isfinite(v)]
        if bad:
            raise DataError(f"{spec.name}: parameter {name}: non-finite value {bad[0]}")
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


def split_counts(n_traj: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Trajectories per split: valid and test get round(n·f) but at least 1, train the rest (≥
    1)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise DataError(
            f"split_fractions {fractions}: need three non-negative fractions (train, valid, test)"
        )
    if n_traj < 3:
        raise DataError(
            f"n_traj={n_traj}: need at least 3 trajectories (one each for train, valid, test)"
        )
    total = sum(fractions)
    n_valid = max(1, round(n_traj * fractions[1] / total))
    n_test = max(1, round(n_traj * fractions[2] / total))
    n_train = n_traj - n_valid - n_test
    if n_train < 1:
        raise DataError(
            f"n_traj={n_traj} with split_fractions {fractions} leaves no training trajectory"
        )
    return {"train": n_train, "valid": n_valid, "test": n_test}


def file_stem(system: str, params: dict[str, float]) -> str:
    return "_".join([system, *(f"{name}_{value:.6g}" for name, value in params.items())])


def concat_trajectories(parts: list[WellData]) -> WellData:
    """Join WellData chunks of the same parameter set along the trajectory axis."""
    if len(parts) == 1:
        return parts[0]
    fields = [
        dataclasses.replace(f, data=np.concatenate([p.fields[i].data for p in parts]))
        for i, f in enumerate(parts[0].fields)
    ]
    return dataclasses.replace(
        parts[0], fields=fields, n_trajectories=sum(p.n_trajectories for p in parts)
    )


def select_trajectories(data: WellData, start: int, stop: int) -> WellData:
    """Trajectories ``[start, stop)`` of ``data`` (sample-varying fields and scalars are sliced)."""
    fields = [
        dataclasses.replace(f, data=f.data[start:stop]) if f.sample_varying else f
        for f in data.fields
    ]
    scalars = [
        dataclasses.replace(s, data=s.data[start:stop]) if s.sample_varying else s
        for s in data.scalars
    ]
    return dataclasses.replace(data, fields=fields, scalars=scalars, n_trajectories=stop - start)


def simulate_trajectories(
    spec: SystemSpec,
    n_traj: int,
    n_steps: int,
    resolution: int,
    params: dict[str, float],
    seed: int,
) -> WellData:
    """``n_traj`` trajectories of one parameter set, in chunks of MAX_BATCH; chunk c is seeded by
    (seed, c), so trajectory i has the same initial condition at every parameter value."""
    parts = []
    for chunk, start in enumerate(range(0, n_traj, MAX_BATCH)):
        rng = np.random.default_rng([seed, chunk])
        parts.append(spec.run(min(MAX_BATCH, n_traj - start), n_steps, resolution, params, rng))
    return concat_trajectories(parts)


def summary_line(path: Path, data: WellData) -> str:
    """One line per written file: sizes, mean next-frame persistence VRMSE, and frozen trajectories
    (persistence < 0.01: the dynamics stopped, which a model cannot learn from) called out."""
    vrmse = np.array([persistence_vrmse(data.frames(i)).mean() for i in range(data.n_trajectories)])
    shape = "x".join(map(str, data.spatial_shape))
    line = f"{path}: {data.n_trajectories} traj x {data.n_steps} steps x {shape}, "
    line += f"persistence VRMSE {vrmse.mean():.3f}"
    frozen = int((vrmse < 0.01).sum())
    return line + (f"  WARNING: {frozen} trajectory(ies) frozen" if frozen else "")


def simulate_dataset(
    system: str,
    out_dir: str | Path,
    *,
    n_traj: int | None = None,
    n_steps: int | None = None,
    resolution: int | None = None,
    params: dict[str, list[float]] | None = None,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Simulate ``system`` for every parameter combination and write a The Well dataset at
    ``out_dir``.

    ``n_traj`` trajectories per combination are split over train/valid/test by ``split_fractions``
    (each split gets ≥ 1).  Sizes default to the system's.  Existing ``.hdf5`` files in the splits
    that this run would not rewrite are refused unless ``overwrite`` (then they are deleted), so
    stats.yaml never mixes two runs.  ``log`` receives one summary line per file written.  Returns
    ``out_dir``.
    """
    from data_pipelines.stats import compute_stats, write_stats
    from data_pipelines.well_io import write_well

    spec = get_system(system)
    n_traj = spec.n_traj if n_traj is None else int(n_traj)
    n_steps = spec.n_steps if n_steps is None else int(n_steps)
    resolution = spec.resolution if resolution is None else int(resolution)
    if n_steps < 2:
        raise DataError(f"n_steps={n_steps}: need at least 2 frames per trajectory")
    if resolution < spec.min_resolution:
        raise DataError(
            f"{spec.name}: resolution={resolution}: need at least {spec.min_resolution} points per dimension"
        )
    counts = split_counts(n_traj, split_fractions)
    grid = parameter_grid(spec, params)
    stems = [file_stem(spec.name, p) for p in grid]
    if len(set(stems)) != len(stems):
        raise DataError(
            f"{spec.name}: parameter values too close to tell apart in file names (6 digits)"
        )

    out_dir = Path(out_dir)
    planned = {out_dir / "data" / split / f"{stem}.hdf5" for split in SPLITS for stem in stems}
    stale = [
        p
        for split in SPLITS
        for p in sorted((out_dir / "data" / split).glob("*.hdf5"))
        if p not in planned
    ]
    if stale and not overwrite:
        raise DataError(
            f"{out_dir}: holds {len(stale)} other .hdf5 file(s) (e.g. {stale[0]}); "
            "pass overwrite=True (--overwrite) to replace them"
        )
    for path in stale:
        path.unlink()

    for combo, stem in zip(grid, stems):
        everything = simulate_trajectories(spec, n_traj, n_steps, resolution, combo, seed)
        start = 0
        for split in SPLITS:  # trajectories [0, n_train) train, then valid, then test
            data = select_trajectories(everything, start, start + counts[split])
            start += counts[split]
            path = out_dir / "data" / split / f"{stem}.hdf5"
            write_well(path, data)
            if log is not None:
                log(summary_line(path, data))
    write_stats(out_dir, compute_stats(out_dir))
    return out_dir
