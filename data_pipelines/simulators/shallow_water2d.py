"""Rotating shallow water on the periodic box [0, 2π)² (f-plane, flat bottom, mean depth H = 1).

Equations (height h, velocity u = (u, v), gravity g = c²/H so that c is the gravity wave speed,
Coriolis parameter f)::

    ∂t h + ∇·(h u) = 0,       ∂t u + (u·∇)u + f ẑ × u = −g ∇h  − ν₄ Δ²u

Linearised, a Fourier mode oscillates as a Poincaré (inertia–gravity) wave with ω² = f² + c²|k|², or
is a steady geostrophic mode; both checked by the tests.

Method: Fourier pseudo-spectral with the 2/3 rule and integrating-factor RK4 (as navier_stokes2d),
the step set by an advective-plus-gravity-wave CFL once per saved frame.  Nonlinear gravity waves
steepen into bores, so a hyperviscosity ν₄ Δ² on the velocity (damping rate 1 per time unit at the
2/3 cutoff) stands in for the shock physics that a finite-volume scheme would capture; it leaves the
mass ∫h untouched (to round-off) and the k < 5 modes almost so.  A numpy solver because the
shallow-water packages on PyPI target the sphere or need compiled MPI builds.

Initial condition: at rest with a random smooth height field (random-phase, energy near |k| = 3, rms
0.1 H), so the flow starts by geostrophic adjustment: part of the bump radiates as gravity waves,
and, when the deformation radius L_d = c/f is below the bump size, part stays as balanced vortices.
Regimes: f = 1 (L_d = c/f ≥ 0.5: mostly radiating gravity waves that interfere and steepen) and f =
3 (L_d ≤ 0.33: balanced vortices that drift, inertial oscillations and waves riding on them); c =
0.5 and 1 set how fast (c = 2 moves too far between frames: persistence VRMSE ≈ 0.95). Frames are
0.1 apart after 1 time unit of spin-up. Saved fields: height (t0) and velocity (t1), arrays indexed
[x, y].
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.simulators.common import (
    SystemSpec,
    if_rk4_integrate,
    make_well_data,
    require_positive,
)
from data_pipelines.simulators.navier_stokes2d import SpectralGrid
from data_pipelines.well_format import Field, WellData

LENGTH = 2 * math.pi
MEAN_DEPTH = 1.0
SPIN_UP_TIME = 1.0
CFL = 1.0  # on |u| + |v| + 2c: RK4 is stable to 2.8 on the imaginary axis
HYPERVISCOUS_RATE = 1.0  # damping rate of the velocity at the 2/3 cutoff, per time unit


def hyperviscosity(grid: SpectralGrid) -> float:
    k_cut = 2 / 3 * (grid.n // 2)
    return HYPERVISCOUS_RATE / k_cut**4


def integrate(
    state: np.ndarray,
    grid: SpectralGrid,
    c: float,
    f: float,
    frame_dt: float,
    n_frames: int,
    n_discard: int = 0,
    nu4: float | None = None,
) -> np.ndarray:
    """Advance state = (h, u, v) [B, 3, n, n] by n_discard + n_frames steps of frame_dt; return the
    states after the last n_frames of them: [B, n_frames, 3, n, n].  nu4 defaults to the grid's."""
    g = c**2 / MEAN_DEPTH
    nu4 = hyperviscosity(grid) if nu4 is None else nu4
    # no damping on h (mass), ν₄|k|⁴ on u and v: [3, 1, ...] broadcasts over the batch
    lin = np.stack([np.zeros_like(grid.k2), -nu4 * grid.k2**2, -nu4 * grid.k2**2])[:, None]
    s_hat = np.moveaxis(grid.fft(state) * grid.dealias, 1, 0)  # [3, B, n, n//2+1]

    def rhs(a_hat: np.ndarray) -> np.ndarray:
        h_hat, u_hat, v_hat = a_hat
        grids = grid.ifft(
            np.stack([h_hat, u_hat, v_hat, grid.ddx * u_hat, grid.ddy * u_hat, grid.ddx * v_hat])
        )
        h, u, v, ux, uy, vx = grids
        vy = grid.ifft(grid.ddy * v_hat)
        flux = grid.fft(np.stack([h * u, h * v, u * ux + v * uy, u * vx + v * vy])) * grid.dealias
        dh = -(grid.ddx * flux[0] + grid.ddy * flux[1])
        du = -flux[2] + f * v_hat - g * grid.ddx * h_hat
        dv = -flux[3] - f * u_hat - g * grid.ddy * h_hat
        return np.stack([dh, du, dv])

    dx = LENGTH / grid.n
    frames = np.empty((state.shape[0], n_frames, 3, grid.n, grid.n), dtype=grid.dtype)
    speed = lambda a_hat: np.max(np.abs(grid.ifft(a_hat[1])) + np.abs(grid.ifft(a_hat[2]))) + 2 * c
    to_frame = lambda a_hat: np.moveaxis(grid.ifft(a_hat), 0, 1)
    return if_rk4_integrate(
        s_hat,
        lin,
        rhs,
        speed,
        frames,
        to_frame,
        frame_dt=frame_dt,
        n_discard=n_discard,
        cfl=CFL,
        dx=dx,
    )


def total_energy(state: np.ndarray, c: float) -> np.ndarray:
    """½∫(h|u|² + g h²) dx over the box; state [..., 3, n, n] → [...]."""
    h, u, v = state[..., 0, :, :], state[..., 1, :, :], state[..., 2, :, :]
    g = c**2 / MEAN_DEPTH
    return 0.5 * (h * (u**2 + v**2) + g * h**2).mean(axis=(-2, -1)) * LENGTH**2


def random_height(
    rng: np.random.Generator, n_traj: int, grid: SpectralGrid, k_peak: float = 3.0
) -> np.ndarray:
    """Fluid at rest on a random smooth height field (rms 0.1 H): state [n_traj, 3, n, n]."""
    k = np.sqrt(grid.k2)
    amplitude = k * np.exp(-((k / k_peak) ** 2))
    shape = (n_traj, *grid.k2.shape)
    eta = grid.ifft(
        amplitude * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * grid.dealias
    )
    eta *= 0.1 * MEAN_DEPTH / eta.std(axis=(-2, -1), keepdims=True)
    return np.stack([MEAN_DEPTH + eta, np.zeros_like(eta), np.zeros_like(eta)], axis=1)


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    require_positive(SPEC.name, params, "c")  # any finite f is valid (f < 0: southern hemisphere)
    grid = SpectralGrid(resolution, length=LENGTH, dtype=np.float32)
    state0 = random_height(rng, n_traj, grid)
    n_spin = math.ceil(SPIN_UP_TIME / SPEC.dt)
    # [B, T, 3, n, n]
    frames = integrate(state0, grid, params["c"], params["f"], SPEC.dt, n_steps, n_spin)
    fields = [
        Field("height", 0, frames[:, :, 0]),
        Field("velocity", 1, np.moveaxis(frames[:, :, 1:], 2, -1)),
    ]
    time = SPEC.dt * np.arange(n_steps)
    return make_well_data(SPEC.name, ["x", "y"], LENGTH, resolution, time, fields, params)


SPEC = SystemSpec(
    name="shallow_water2d",
    n_spatial_dims=2,
    default_params={"c": [0.5, 1.0], "f": [1.0, 3.0]},
    resolution=64,
    n_steps=48,
    dt=0.1,
    description="Rotating shallow water (height, velocity), pseudo-spectral; c/f: gravity waves → balanced vortices",
    run=run,
    n_traj=10,
    field_names=("height", "velocity_x", "velocity_y"),
    min_resolution=16,
    regimes=(
        "f 1: geostrophic adjustment radiates gravity waves that interfere and steepen",
        "f 3: balanced vortices drift, waves ride on them",
        "c 0.5 / 1: slow / fast waves",
    ),
)
