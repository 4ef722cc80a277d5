"""2D Rayleigh–Bénard convection (Boussinesq) between no-slip plates, periodic in x: [0, 2) × [0,
1].

Equations (as The Well's ``rayleigh_benard``: buoyancy b, velocity u = (u, w), pressure p)::

    ∂t b + u·∇b = κ Δb,    ∂t u + u·∇u = −∇p + ν Δu + b ẑ,    ∇·u = 0,
    κ = (Rayleigh · Prandtl)^(−1/2),   ν = (Rayleigh / Prandtl)^(−1/2)    (free-fall units)

with b = 1 on the bottom plate, b = 0 on the top one, and u = 0 on both (no slip).

Method: vorticity–stream-function form (ω = ∂x w − ∂z u, Δψ = −ω, u = ∂zψ, w = −∂xψ): Fourier in x
(dealiased by the 2/3 rule: ω, b and every tendency keep only the x-modes below 2/3 of the Nyquist
one, which removes the products' aliases; a grid-scale filter is not needed), second-order finite
differences in z on the grid z_j = j/(n−1) that includes both plates; ψ from one precomputed
tridiagonal-system inverse per x-wavenumber, no-slip through Thom's wall vorticity ω_wall =
−2ψ₁/Δz²; three-stage SSP Runge–Kutta, explicit, with the step set by advection and diffusion.  The
discrete velocity is divergence-free to round-off.  The pressure of each saved frame solves Δp = ∂z
b − ∂i uj ∂j ui with the Neumann condition ∂z p = b + ν ∂x ω at the plates (the z-momentum equation
there), zero mean.  Hand-written because Dedalus (The Well's solver) has no wheel here and needs
MPI/FFTW builds.

Initial condition: the conduction profile b = 1 − z plus random noise ∝ z(1 − z) (as The Well), at
rest; the first 20 time units (onset and the first plumes) are discarded.
Regimes: Rayleigh 5e5 (a few large rolls whose plumes wander) and 2e6 (thinner plumes that detach
and sweep the rolls around); Prandtl 0.5 and 1.  The default grid is 48²; 16² blows up at these
Rayleigh numbers.  At 48² the central differences overshoot once the plumes get too thin for the
grid: the buoyancy (bounded by [0, 1] in the PDE) reached −0.39…1.30 at Rayleigh 3e6, Prandtl 1
and 1.13 at 3e6, Prandtl 0.7 (prototype runs here), but stays within 7.3 % of [0, 1] at all four
default combinations (6 trajectories each), so the sweep stops at 2e6.  Frames are 0.5 free-fall
times apart.  Saved fields: buoyancy, pressure (t0), velocity (t1), arrays indexed [x, z];
boundary conditions: x periodic, z walls.
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.simulators.common import (
    SystemSpec,
    make_well_data,
    require_positive,
    wavenumbers,
)
from data_pipelines.well_format import Field, WellData

WIDTH = 2.0  # Lx: one pair of rolls at the critical wavenumber π fits the box
DEPTH = 1.0
SPIN_UP_TIME = 20.0
CFL = 0.5


class WallGrid:
    """Fourier in x (n points, rfft) × n z-nodes from plate to plate; operators for the solver."""

    def __init__(self, n: int):
        self.n = n
        self.dz = DEPTH / (n - 1)
        self.kx = wavenumbers(n, WIDTH, real=True)[:, None]  # [n//2+1, 1]
        self.dealias = (np.abs(self.kx) < 2 / 3 * (n // 2) * (2 * math.pi / WIDTH)).astype(
            np.float64
        )
        m = n - 2  # interior nodes
        d2 = (
            np.diag(np.full(m, -2.0)) + np.diag(np.ones(m - 1), 1) + np.diag(np.ones(m - 1), -1)
        ) / self.dz**2
        # ψ̂ = (D2 − kx²)⁻¹ (−ω̂) on the interior, ψ = 0 on the plates: [n//2+1, m, m]
        self.poisson_inverse = np.linalg.inv(d2[None] - self.kx[:, :, None] ** 2 * np.eye(m)[None])
        self.neumann_inverse = self._neumann_inverse()

    def _neumann_inverse(self) -> np.ndarray:
        """(D2 − kx²)⁻¹ on all n nodes with ghost-point Neumann rows, for kx ≠ 0: [n//2+1, n, n]."""
        n, dz = self.n, self.dz
        d2 = (
            np.diag(np.full(n, -2.0)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)
        ) / dz**2
        d2[0, 1] = d2[-1, -2] = 2 / dz**2
        ops = d2[None] - self.kx[:, :, None] ** 2 * np.eye(n)[None]
        ops[0] = np.eye(n)  # kx = 0 is singular; handled by integrating the mean z-momentum balance
        return np.linalg.inv(ops)

    def fft(self, a: np.ndarray) -> np.ndarray:
        return np.fft.rfft(a, axis=-2)

    def ifft(self, a_hat: np.ndarray) -> np.ndarray:
        return np.fft.irfft(a_hat, n=self.n, axis=-2)

    def project(self, a: np.ndarray) -> np.ndarray:
        """Drop the x-modes above the 2/3 cutoff (Orszag's rule)."""
        return self.ifft(self.fft(a) * self.dealias)

    def ddx(self, a: np.ndarray) -> np.ndarray:
        return self.ifft(1j * self.kx * self.fft(a) * self.dealias)

    def ddz(self, a: np.ndarray) -> np.ndarray:
        """Central difference on the interior, one-sided second order on the plates."""
        out = np.empty_like(a)
        out[..., 1:-1] = (a[..., 2:] - a[..., :-2]) / (2 * self.dz)
        out[..., 0] = (-3 * a[..., 0] + 4 * a[..., 1] - a[..., 2]) / (2 * self.dz)
        out[..., -1] = (3 * a[..., -1] - 4 * a[..., -2] + a[..., -3]) / (2 * self.dz)
        return out

    def laplacian_interior(self, a: np.ndarray) -> np.ndarray:
        a_xx = self.ifft(-(self.kx**2) * self.fft(a) * self.dealias)
        return a_xx[..., 1:-1] + (a[..., 2:] - 2 * a[..., 1:-1] + a[..., :-2]) / self.dz**2

    def velocity(self, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, w) = (∂zψ, −∂xψ), with the no-slip u = 0 on the plates imposed exactly."""
        u = self.ddz(psi)
        u[..., [0, -1]] = 0.0
        return u, -self.ddx(psi)

    def streamfunction(self, w: np.ndarray) -> np.ndarray:
        """ψ from the interior vorticity, zero on the plates: [..., n, n]."""
        w_hat = self.fft(w[..., 1:-1]) * self.dealias
        psi_hat = -(self.poisson_inverse @ w_hat[..., None])[..., 0]
        psi = np.zeros_like(w)
        psi[..., 1:-1] = self.ifft(psi_hat)
        return psi


def tendencies(w: np.ndarray, b: np.ndarray, grid: WallGrid, nu: float, kappa: float):
    """Interior tendencies of ω and b; sets the wall vorticity of ``w`` in place (Thom)."""
    psi = grid.streamfunction(w)
    w[..., 0] = -2 * psi[..., 1] / grid.dz**2
    w[..., -1] = -2 * psi[..., -2] / grid.dz**2
    u, vert = grid.velocity(psi)
    adv_w = u * grid.ddx(w) + vert * grid.ddz(w)
    adv_b = u * grid.ddx(b) + vert * grid.ddz(b)
    dw = -adv_w[..., 1:-1] + nu * grid.laplacian_interior(w) + grid.ddx(b)[..., 1:-1]
    db = -adv_b[..., 1:-1] + kappa * grid.laplacian_interior(b)
    # 2/3 rule: ω and b live on the x-modes below the cutoff, so u·∇ of them reaches at most 4/3 of
    # it and its aliases land above the cutoff, where this projection removes them.  Without it the
    # products' aliases pile up in the top third of x-modes, which no diffusion damps: grid-scale
    # vertical stripes.
    return grid.project(dw), grid.project(db), u, vert


def integrate(
    w: np.ndarray,
    b: np.ndarray,
    grid: WallGrid,
    nu: float,
    kappa: float,
    frame_dt: float,
    n_frames: int,
    n_discard: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance (ω, b) [B, n, n] (b on the plates stays as given) by n_discard + n_frames frames;
    return the last n_frames of each: [B, n_frames, n, n]."""
    w, b = grid.project(w), grid.project(b)  # start on the dealiased x-modes (see tendencies)
    dx = WIDTH / grid.n
    k_max = 2 / 3 * (grid.n // 2) * (2 * math.pi / WIDTH)
    # SSP-RK3 is stable to ≈ 2.5
    diffusive_dt = 1.0 / (max(nu, kappa) * (4 / grid.dz**2 + k_max**2))
    frames_w = np.empty((w.shape[0], n_frames, grid.n, grid.n))
    frames_b = np.empty_like(frames_w)

    def stage(w0, b0, w1, b1, h, keep):  # (keep)·(w0, b0) + (1 − keep)·(w1 + h·F(w1, b1))
        dw, db, _, _ = tendencies(w1, b1, grid, nu, kappa)
        w_new, b_new = w1.copy(), b1.copy()
        w_new[..., 1:-1] = keep * w0[..., 1:-1] + (1 - keep) * (w1[..., 1:-1] + h * dw)
        b_new[..., 1:-1] = keep * b0[..., 1:-1] + (1 - keep) * (b1[..., 1:-1] + h * db)
        return w_new, b_new

    for t in range(-n_discard, n_frames):
        _, _, u, vert = tendencies(w, b, grid, nu, kappa)
        speed = max(np.abs(u).max() / dx + np.abs(vert).max() / grid.dz, 1e-12)
        n_sub = max(1, math.ceil(frame_dt / min(CFL / speed, diffusive_dt)))
        h = frame_dt / n_sub
        for _ in range(n_sub):  # SSP-RK3 (Shu–Osher)
            w1, b1 = stage(w, b, w, b, h, 0.0)
            w2, b2 = stage(w, b, w1, b1, h, 0.75)
            w, b = stage(w, b, w2, b2, h, 1 / 3)
        if t >= 0:
            tendencies(w, b, grid, nu, kappa)  # refresh the wall vorticity of the saved state
            frames_w[:, t], frames_b[:, t] = w, b
    return frames_w, frames_b


def pressure(w: np.ndarray, b: np.ndarray, grid: WallGrid, nu: float) -> np.ndarray:
    """Pressure (zero mean) of states ω, b [..., n, n] with their wall vorticity set."""
    u, vert = grid.velocity(grid.streamfunction(w))
    ux, uz, wx, wz = grid.ddx(u), grid.ddz(u), grid.ddx(vert), grid.ddz(vert)
    rhs = grid.ddz(b) - (ux**2 + 2 * uz * wx + wz**2)
    # Neumann data ∂z p = b + ν ∂x ω on each plate, folded into the ghost-point rows
    rhs[..., 0] += 2 * (b[..., 0] + nu * grid.ddx(w)[..., 0]) / grid.dz
    rhs[..., -1] -= 2 * (b[..., -1] + nu * grid.ddx(w)[..., -1]) / grid.dz
    p_hat = (grid.neumann_inverse @ (grid.fft(rhs) * grid.dealias)[..., None])[..., 0]
    # kx = 0: ∂z p̄ = b̄ − ∂z (w²)‾, integrated by the trapezoidal rule
    b_mean, w2_mean = b.mean(axis=-2), (vert**2).mean(axis=-2)
    steps = 0.5 * (b_mean[..., 1:] + b_mean[..., :-1]) * grid.dz
    p_mean = (
        np.concatenate([np.zeros_like(b_mean[..., :1]), np.cumsum(steps, axis=-1)], axis=-1)
        - w2_mean
    )
    p_hat[..., 0, :] = p_mean * grid.n  # rfft's zero mode is the sum over x
    p = grid.ifft(p_hat)
    return p - p.mean(axis=(-2, -1), keepdims=True)


def conduction_with_noise(
    rng: np.random.Generator, n_traj: int, grid: WallGrid
) -> tuple[np.ndarray, np.ndarray]:
    """b = 1 − z + 1e-3 · noise · z(1 − z), at rest: (ω, b) [n_traj, n, n] each."""
    z = np.linspace(0, DEPTH, grid.n)[None, None, :]
    b = (1 - z) + 1e-3 * rng.standard_normal((n_traj, grid.n, grid.n)) * z * (1 - z)
    return np.zeros_like(b), np.broadcast_to(b, (n_traj, grid.n, grid.n)).copy()


def diffusivities(params: dict[str, float]) -> tuple[float, float]:
    """(ν, κ) in free-fall units."""
    ra, pr = params["Rayleigh"], params["Prandtl"]
    return (ra / pr) ** -0.5, (ra * pr) ** -0.5


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    require_positive(SPEC.name, params, "Rayleigh", "Prandtl")
    nu, kappa = diffusivities(params)
    grid = WallGrid(resolution)
    w0, b0 = conduction_with_noise(rng, n_traj, grid)
    n_spin = math.ceil(SPIN_UP_TIME / SPEC.dt)
    w, b = integrate(w0, b0, grid, nu, kappa, SPEC.dt, n_steps, n_spin)  # [B, T, n, n]
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise DataError(
            f"{SPEC.name}: the solution blew up at Rayleigh={params['Rayleigh']:g}, resolution {resolution}: "
            "the boundary layers are not resolved; use a finer --resolution or a smaller Rayleigh number"
        )
    velocity = np.stack(grid.velocity(grid.streamfunction(w)), axis=-1)
    fields = [
        Field("buoyancy", 0, b),
        Field("pressure", 0, pressure(w, b, grid, nu)),
        Field("velocity", 1, velocity),
    ]
    time = SPEC.dt * np.arange(n_steps)
    lengths = {"x": WIDTH, "z": DEPTH}
    return make_well_data(
        SPEC.name, ["x", "z"], DEPTH, resolution, time, fields, params, ("z",), lengths
    )


SPEC = SystemSpec(
    name="rayleigh_benard2d",
    n_spatial_dims=2,
    default_params={"Rayleigh": [5e5, 2e6], "Prandtl": [0.5, 1.0]},
    resolution=48,
    n_steps=24,
    dt=0.5,
    description="Rayleigh-Benard convection between no-slip plates (buoyancy, pressure, velocity), x periodic",
    run=run,
    n_traj=6,
    field_names=("buoyancy", "pressure", "velocity_x", "velocity_z"),
    min_resolution=32,  # 16² blows up at Rayleigh 1e6: the boundary layers fall between grid points
    regimes=(
        "Rayleigh 5e5: large rolls with wandering plumes",
        "Rayleigh 2e6: thin plumes detach and sweep the rolls around",
        "Prandtl 0.5 / 1",
    ),
)
