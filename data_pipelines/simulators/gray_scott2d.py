"""Gray–Scott reaction–diffusion on the periodic square [0, 64)².

Equations (u: substrate A, v: autocatalyst B)::

    ∂t u = Du Δu − u v² + F (1 − u)
    ∂t v = Dv Δv + u v² − (F + k) v

Method: second-order five-point Laplacian with periodic wrap, forward Euler, vectorised over
trajectories (the same functions, with the seven-point Laplacian, serve ``gray_scott3d``).  The step
is Δt = 1 where stable (the diffusive limit is dx²/(4 Du) = 1.25 at dx = 1; the reaction rates are
O(0.1)) and shrinks as dx² on finer grids, so --resolution 128 costs 16× the default.  The box stays
64 units wide at every resolution: the pattern's own length scale is about 10 units, and boxes much
smaller than 48 units let it die out.  Below 32² (dx = 2) it dies for lack of resolution, so 32 is
the smallest grid allowed.  Initial condition: the trivial state u = 1, v = 0 with six random
6×6-unit squares set to u = 0.5, v = 0.25, plus 1 % noise, as in Pearson (1993, Science 261:189).

Defaults: Du = 0.2, Dv = 0.1 (Pearson's ratio 2), 64² (dx = 1), 30 time units per saved frame.
Regimes by (F, k) — only those that keep moving, since a model learns nothing from a frozen pattern:
(0.018, 0.051) spiral waves and (0.014, 0.054) moving spots ("gliders"); all four combinations of
these values keep moving.  Seen on a prototype here: (0.037, 0.060) spots freeze and (0.026, 0.051)
oscillates uniformly or dies, so those are not defaults (any (F, k) can still be asked for).  The
first 1500 time units are discarded (persistence is steady after ≈ 750) so the seeded patches have
grown into the pattern; the persistence VRMSE between frames is then ≈ 0.2–0.4.
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.simulators.common import SystemSpec, make_well_data
from data_pipelines.well_format import Field, WellData

LENGTH = 64.0
DIFFUSION_U = 0.2
DIFFUSION_V = 0.1
FRAME_TIME = 30.0
SPIN_UP_TIME = 1500.0  # persistence is steady after ≈ 750
N_PATCHES = 6
PATCH_SIZE = 6.0  # in length units
MIN_RESOLUTION = 32


def laplacian(a: np.ndarray, n_dims: int = 2) -> np.ndarray:
    """(2·n_dims + 1)-point periodic Laplacian for grid spacing 1 over the last ``n_dims`` axes
    (divide by dx²): the five-point stencil in 2D, seven-point in 3D (``gray_scott3d``).  The sum
    runs axis by axis in a fixed order, so the 2D sum is the five-point formula's, bit for bit."""
    total = np.roll(a, 1, -n_dims) + np.roll(a, -1, -n_dims)
    for axis in range(-n_dims + 1, 0):
        total = total + np.roll(a, 1, axis) + np.roll(a, -1, axis)
    return total - 2 * n_dims * a


def time_step(dx: float, n_dims: int = 2, frame_time: float = FRAME_TIME) -> tuple[float, int]:
    """Euler step and steps per frame: Δt = 1 or less, within 80 % of the limit dx²/(2 n_dims
    Du)."""
    steps = math.ceil(frame_time / min(1.0, 0.8 * dx**2 / (2 * n_dims * DIFFUSION_U)))
    return frame_time / steps, steps


def integrate(
    u: np.ndarray,
    v: np.ndarray,
    feed: float,
    kill: float,
    n_frames: int,
    steps_per_frame: int,
    dt: float = 1.0,
    dx: float = 1.0,
    n_discard_steps: int = 0,
    du: float = DIFFUSION_U,
    dv: float = DIFFUSION_V,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance (u, v) [B, n, n] (or [B, n, n, n]: the dimension is u.ndim − 1) by n_discard_steps,
    then n_frames × steps_per_frame Euler steps; return the frames of u and v after each frame:
    [B, T, *space] each, in the dtype of u."""
    u, v = u.copy(), v.copy()
    n_dims = u.ndim - 1
    du, dv = du / dx**2, dv / dx**2  # fold the grid spacing into the diffusion coefficients

    def step(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        uvv = u * v * v
        u_new = u + dt * (du * laplacian(u, n_dims) - uvv + feed * (1 - u))
        v_new = v + dt * (dv * laplacian(v, n_dims) + uvv - (feed + kill) * v)
        return u_new, v_new

    for _ in range(n_discard_steps):
        u, v = step(u, v)
    frames_u = np.empty((u.shape[0], n_frames, *u.shape[1:]), dtype=u.dtype)
    frames_v = np.empty_like(frames_u)
    for t in range(n_frames):
        for _ in range(steps_per_frame):
            u, v = step(u, v)
        frames_u[:, t], frames_v[:, t] = u, v
    return frames_u, frames_v


def random_patches(
    rng: np.random.Generator, n_traj: int, n: int, n_dims: int = 2, length: float = LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """u = 1, v = 0 with N_PATCHES random squares (cubes in 3D), PATCH_SIZE wide, at u = 0.5, v =
    0.25, plus 1 % noise.  [n_traj, n, ...] each."""
    shape = (n_traj,) + (n,) * n_dims
    u, v = np.ones(shape), np.zeros(shape)
    side = max(2, round(PATCH_SIZE * n / length))
    for b in range(n_traj):
        for corner in rng.integers(0, n, size=(N_PATCHES, n_dims)):
            patch = np.ix_(*[np.arange(c, c + side) % n for c in corner])
            u[b][patch] = 0.5
            v[b][patch] = 0.25
    u += 0.01 * rng.standard_normal(u.shape)
    v += 0.01 * rng.standard_normal(v.shape)
    return u, v


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    return simulate(SPEC, LENGTH, SPIN_UP_TIME, n_traj, n_steps, resolution, params, rng)


def simulate(
    spec: SystemSpec,
    length: float,
    spin_up_time: float,
    n_traj: int,
    n_steps: int,
    resolution: int,
    params: dict[str, float],
    rng: np.random.Generator,
) -> WellData:
    """Gray–Scott in ``spec.n_spatial_dims`` dimensions (``gray_scott3d`` too) on a periodic box
    ``length`` wide: random patches, ``spin_up_time`` discarded, then ``n_steps`` frames ``spec.dt``
    apart."""
    if resolution < spec.min_resolution:
        raise DataError(
            f"{spec.name}: resolution {resolution} < {spec.min_resolution}; the pattern dies on coarser grids"
        )
    n_dims = spec.n_spatial_dims
    dx = length / resolution
    dt, steps_per_frame = time_step(dx, n_dims=n_dims, frame_time=spec.dt)
    u0, v0 = random_patches(rng, n_traj, resolution, n_dims=n_dims, length=length)
    # float32 state halves the memory traffic of this bandwidth-bound stencil; Euler's own error is
    # larger
    u, v = integrate(
        u0.astype(np.float32),
        v0.astype(np.float32),
        params["F"],
        params["k"],
        n_steps,
        steps_per_frame,
        dt=dt,
        dx=dx,
        n_discard_steps=round(spin_up_time / dt),
    )  # [B, T, *space] each
    time = spec.dt * np.arange(n_steps)
    fields = [Field("A", 0, u), Field("B", 0, v)]
    return make_well_data(
        spec.name, ["x", "y", "z"][:n_dims], length, resolution, time, fields, params
    )


SPEC = SystemSpec(
    name="gray_scott2d",
    n_spatial_dims=2,
    default_params={"F": [0.018, 0.014], "k": [0.051, 0.054]},
    resolution=64,
    n_steps=64,
    dt=FRAME_TIME,
    description="Gray-Scott reaction-diffusion (A=u, B=v), explicit finite differences; (F, k): spirals, gliders",
    run=run,
    field_names=("A", "B"),
    min_resolution=MIN_RESOLUTION,
    regimes=("F=0.018,k=0.051: spiral waves", "F=0.014,k=0.054: moving spots (gliders)"),
)
