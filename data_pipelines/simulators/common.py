"""Pieces every built-in simulator shares: the :class:`SystemSpec` registry entry, periodic grids
and boundary conditions, assembling a :class:`WellData`, the integrating-factor RK4 frame loop of
the pseudo-spectral fluids, and the persistence VRMSE used to check that a dataset keeps moving (a
model can only learn dynamics that change from frame to frame)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.well_format import BoundaryCondition, Field, Scalar, WellData

# run(n_traj, n_steps, resolution, params, rng) -> WellData
RunFn = Callable[[int, int, int, dict[str, float], np.random.Generator], WellData]


@dataclass(frozen=True)
class SystemSpec:
    """A built-in system: its defaults and the function that simulates one parameter set."""

    name: str
    n_spatial_dims: int
    # regime values a default dataset covers (cartesian product)
    default_params: dict[str, list[float]]
    resolution: int  # grid points per spatial dimension
    n_steps: int  # saved frames per trajectory (after the discarded spin-up)
    dt: float  # physical time between saved frames
    description: str
    run: RunFn
    n_traj: int = 10  # trajectories per parameter set in a default dataset (split 8/1/1)
    field_names: tuple[str, ...] = ()  # channel names of the frames, for --list and docs
    min_resolution: int = 8  # coarser grids lose the dynamics
    # the visibly different regimes the default sweep spans, for --list
    regimes: tuple[str, ...] = ()

    def complete_params(self, params: dict[str, float]) -> dict[str, float]:
        """Fill missing parameters with their first default value (for calling ``run`` directly);
        refuse unknown names."""
        unknown = sorted(set(params) - set(self.default_params))
        if unknown:
            raise DataError(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(self.default_params)}"
            )
        return {k: float(params.get(k, v[0])) for k, v in self.default_params.items()}


def periodic_grid(n: int, length: float) -> np.ndarray:
    """Cell-centred-free periodic grid ``x_j = j L / n`` (the point ``L`` is the image of ``0``)."""
    return np.arange(n, dtype=np.float64) * (length / n)


def periodic_bcs(
    spatial_dims: list[str], n: int, field_names: list[str]
) -> list[BoundaryCondition]:
    """Periodic boundaries on every axis, as The Well stores them: a mask true at both ends."""
    return edge_bcs("PERIODIC", spatial_dims, n, field_names)


def wall_bcs(spatial_dims: list[str], n: int, field_names: list[str]) -> list[BoundaryCondition]:
    """Walls on the given axes (The Well's ``WALL``): a mask true at the two boundary grid
    points."""
    return edge_bcs("WALL", spatial_dims, n, field_names)


def edge_bcs(
    bc_type: str, spatial_dims: list[str], n: int, field_names: list[str]
) -> list[BoundaryCondition]:
    """One ``bc_type`` boundary per axis, named ``{dim}_{bc_type.lower()}``, masking both end
    points."""
    bcs = []
    for dim in spatial_dims:
        mask = np.zeros(n, dtype=bool)
        mask[[0, -1]] = True
        bcs.append(
            BoundaryCondition(f"{dim}_{bc_type.lower()}", bc_type, [dim], list(field_names), mask)
        )
    return bcs


def make_well_data(
    name: str,
    spatial_dims: list[str],
    length: float,
    n: int,
    time: np.ndarray,
    fields: list[Field],
    params: dict[str, float],
    wall_dims: tuple[str, ...] = (),
    lengths: dict[str, float] | None = None,
) -> WellData:
    """A :class:`WellData` with the simulation parameters as root attrs and scalars.

    Every axis is periodic (grid ``j L / n``) except those in ``wall_dims``, whose grids run from
    one wall to the other, both included (``linspace(0, L, n)``).  ``lengths`` overrides ``length``
    per axis.
    """
    lengths = {d: (lengths or {}).get(d, length) for d in spatial_dims}
    coords = {
        d: (
            np.linspace(0, lengths[d], n) if d in wall_dims else periodic_grid(n, lengths[d])
        ).astype(np.float32)
        for d in spatial_dims
    }
    scalars = [Scalar(k, np.asarray(v, dtype=np.float64)) for k, v in params.items()]
    for f in fields:
        f.data = np.ascontiguousarray(f.data, dtype=np.float32)
    names = [f.name for f in fields]
    return WellData(
        dataset_name=name,
        spatial_dims=list(spatial_dims),
        coords=coords,
        time=np.asarray(time, dtype=np.float32),
        fields=fields,
        simulation_parameters=dict(params),
        scalars=scalars,
        boundary_conditions=periodic_bcs([d for d in spatial_dims if d not in wall_dims], n, names)
        + wall_bcs([d for d in spatial_dims if d in wall_dims], n, names),
    )


def require_positive(system: str, params: dict[str, float], *names: str) -> None:
    """Refuse a parameter that must be > 0 (and finite) with one line naming it."""
    for key in names:
        if not (np.isfinite(params[key]) and params[key] > 0):
            raise DataError(f"{system}: parameter {key}={params[key]:g} must be a positive number")


def persistence_vrmse(frames: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """VRMSE of predicting frame ``t`` by frame ``t-1``, per channel, averaged over time.

    frames: [T, C, *space] → [C].  VRMSE = sqrt(mean_space((pred - true)^2) / (var_space(true) +
    eps)), The Well's definition; 1.0 means as bad as predicting the spatial mean, 0 means frozen
    dynamics.
    """
    true, pred = frames[1:].astype(np.float64), frames[:-1].astype(np.float64)
    space = tuple(range(2, frames.ndim))
    mse = ((pred - true) ** 2).mean(axis=space)
    var = true.var(axis=space)
    return np.sqrt(mse / (var + eps)).mean(axis=0)


def wavenumbers(n: int, length: float, real: bool = False) -> np.ndarray:
    """Angular wavenumbers of an ``n``-point periodic grid of size ``length`` (numpy FFT order)."""
    freq = np.fft.rfftfreq(n, d=length / n) if real else np.fft.fftfreq(n, d=length / n)
    return 2 * np.pi * freq


def if_rk4_integrate(
    v_hat: np.ndarray,
    linear: np.ndarray,
    rhs: Callable[[np.ndarray], np.ndarray],
    speed: Callable[[np.ndarray], float],
    frames: np.ndarray,
    to_frame: Callable[[np.ndarray], np.ndarray],
    *,
    frame_dt: float,
    n_discard: int,
    cfl: float,
    dx: float,
) -> np.ndarray:
    """Integrating-factor RK4 for ``dv/dt = linear·v + rhs(v)`` per Fourier mode (the linear part
    exact).

    Runs ``n_discard + n_frames`` frames of ``frame_dt`` (n_frames = ``frames.shape[1]``), each in
    the fewest equal substeps that keep ``speed(v) · h ≤ cfl · dx``, and fills ``frames[:, t]`` with
    ``to_frame(v_hat)`` after each of the last n_frames.  The step is cast to ``frames.dtype`` so
    float32 runs stay in float32."""
    for t in range(-n_discard, frames.shape[1]):
        n_sub = max(1, math.ceil(frame_dt * speed(v_hat) / (cfl * dx)))
        h = frame_dt / n_sub
        e, e2 = np.exp(linear * h), np.exp(linear * h / 2)
        h = frames.dtype.type(h)
        for _ in range(n_sub):
            a = rhs(v_hat)
            b = rhs(e2 * (v_hat + 0.5 * h * a))
            c = rhs(e2 * v_hat + 0.5 * h * b)
            d = rhs(e * v_hat + h * e2 * c)
            v_hat = e * v_hat + h / 6 * (e * a + 2 * e2 * (b + c) + d)
        if t >= 0:
            frames[:, t] = to_frame(v_hat)
    return frames
