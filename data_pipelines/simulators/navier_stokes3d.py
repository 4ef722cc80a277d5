"""3D incompressible Navier–Stokes, Kolmogorov-forced, on the periodic box [0, 2π)³.

Equations (velocity u, pressure p, unit density)::

    ∂t u + (u·∇)u = −∇p + ν Δu + f,    ∇·u = 0,    f = F sin(k_f y) x̂

Method: Fourier pseudo-spectral (rfftn) in rotational form: ∂t û = P[(u × ω)^] + f̂ − ν|k|² û, where
P projects onto divergence-free modes (û − k (k·û)/|k|²) and absorbs the pressure; the 2/3 rule
removes aliasing; the integrating-factor RK4 of :mod:`navier_stokes2d` treats viscosity exactly; the
step follows an advective CFL of 1 per saved frame.  A short numpy solver because the spectral
libraries on PyPI (Dedalus, shenfun, spectralDNS) need MPI/FFTW builds that do not install here as
wheels, and this 3D periodic case is ~100 lines.  The pressure is recovered at each saved frame
from Δp = −∂i∂j(ui uj) (the forcing is divergence-free), with zero mean.

Forcing and regimes (after Borue & Orszag 1996, JFM 306:293, 3D Kolmogorov flow): k_f = 2, F = 0.5,
so the laminar flow u = F/(ν k_f²) sin(k_f y) x̂ has Reynolds number F/(ν² k_f³): 69 at ν = 0.03
(the laminar profile is unstable; large meandering structures, weakly turbulent) and 434 at ν =
0.012 (3D turbulence with small vortex tubes; at 32³ the dissipation range is marginally resolved,
k_max η ≈ 0.4 for a dissipation rate of order 1, and the 2/3 rule keeps it stable). Initial
condition: random-phase divergence-free velocity with energy near |k| = 3 and rms 1; the first 3
time units are discarded.  Frames are 0.3 apart.  Saved fields: pressure (t0), velocity (t1), arrays
indexed [x, y, z].
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.simulators.common import (
    SystemSpec,
    if_rk4_integrate,
    make_well_data,
    periodic_grid,
    require_positive,
    wavenumbers,
)
from data_pipelines.well_format import Field, WellData

LENGTH = 2 * math.pi
FORCING_WAVENUMBER = 2
FORCING_AMPLITUDE = 0.5
SPIN_UP_TIME = 3.0
CFL = 1.0  # on |u|+|v|+|w|


class SpectralGrid3D:
    """Wavenumbers of an n³ periodic grid for rfftn over the last three axes (x, y, z)."""

    def __init__(self, n: int, dtype: type = np.float64):
        self.n, self.dtype = n, np.dtype(dtype)
        complex_dtype = np.result_type(self.dtype, np.complex64)
        k = wavenumbers(n, LENGTH)
        kx, ky = k[:, None, None], k[None, :, None]
        kz = wavenumbers(n, LENGTH, real=True)[None, None, :]
        self.k = [np.broadcast_to(a, (n, n, n // 2 + 1)).astype(self.dtype) for a in (kx, ky, kz)]
        k2 = kx**2 + ky**2 + kz**2
        self.k2 = k2.astype(self.dtype)
        self.inv_k2 = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0).astype(self.dtype)
        k_max = n // 2
        dealias = (
            (np.abs(kx) < 2 / 3 * k_max)
            & (np.abs(ky) < 2 / 3 * k_max)
            & (np.abs(kz) < 2 / 3 * k_max)
        )
        self.dealias = dealias.astype(self.dtype)
        self.ik = [(1j * a).astype(complex_dtype) for a in self.k]

    def fft(self, a: np.ndarray) -> np.ndarray:
        return np.fft.rfftn(a.astype(self.dtype, copy=False), axes=(-3, -2, -1))

    def ifft(self, a_hat: np.ndarray) -> np.ndarray:
        return np.fft.irfftn(a_hat, s=(self.n,) * 3, axes=(-3, -2, -1))

    def project(self, u_hat: np.ndarray) -> np.ndarray:
        """Divergence-free part of û [..., 3, n, n, n//2+1]: û − k (k·û)/|k|²."""
        k_dot_u = sum(self.k[i] * u_hat[..., i, :, :, :] for i in range(3)) * self.inv_k2
        return u_hat - np.stack([self.k[i] * k_dot_u for i in range(3)], axis=-4)

    def curl_hat(self, u_hat: np.ndarray) -> np.ndarray:
        ikx, iky, ikz = self.ik
        ux, uy, uz = (u_hat[..., i, :, :, :] for i in range(3))
        return np.stack([iky * uz - ikz * uy, ikz * ux - ikx * uz, ikx * uy - iky * ux], axis=-4)

    def nonlinear_hat(self, u_hat: np.ndarray) -> np.ndarray:
        """P[(u × ω)^], dealiased: the advection term with the pressure gradient absorbed."""
        u, w = np.split(
            self.ifft(np.concatenate([u_hat, self.curl_hat(u_hat)], axis=-4)), 2, axis=-4
        )
        cross = np.stack(
            [
                u[..., 1, :, :, :] * w[..., 2, :, :, :] - u[..., 2, :, :, :] * w[..., 1, :, :, :],
                u[..., 2, :, :, :] * w[..., 0, :, :, :] - u[..., 0, :, :, :] * w[..., 2, :, :, :],
                u[..., 0, :, :, :] * w[..., 1, :, :, :] - u[..., 1, :, :, :] * w[..., 0, :, :, :],
            ],
            axis=-4,
        )
        return self.project(self.fft(cross) * self.dealias)

    def pressure(self, u: np.ndarray) -> np.ndarray:
        """p = Δ⁻¹(−∂i∂j(ui uj)), zero mean; u [..., 3, n, n, n] → [..., n, n, n]."""
        p_hat = 0
        for i in range(3):
            for j in range(i, 3):
                weight = 1 if i == j else 2
                p_hat = p_hat + weight * self.k[i] * self.k[j] * self.fft(
                    u[..., i, :, :, :] * u[..., j, :, :, :]
                )
        return self.ifft(-p_hat * self.inv_k2 * self.dealias)


def integrate(
    u: np.ndarray,
    grid: SpectralGrid3D,
    nu: float,
    forcing: np.ndarray | None,
    frame_dt: float,
    n_frames: int,
    n_discard: int = 0,
    cfl: float = CFL,
) -> np.ndarray:
    """Advance velocity u [B, 3, n, n, n] by n_discard + n_frames steps of frame_dt; return the
    states after the last n_frames of them: [B, n_frames, 3, n, n, n]."""
    f_hat = 0.0 if forcing is None else grid.project(grid.fft(forcing) * grid.dealias)
    u_hat = grid.project(grid.fft(u) * grid.dealias)
    dx = LENGTH / grid.n
    frames = np.empty((u.shape[0], n_frames, 3, *(grid.n,) * 3), dtype=grid.dtype)
    rhs = lambda a_hat: grid.nonlinear_hat(a_hat) + f_hat
    speed = lambda a_hat: np.abs(grid.ifft(a_hat)).sum(axis=-4).max()
    lin = -nu * grid.k2
    return if_rk4_integrate(
        u_hat,
        lin,
        rhs,
        speed,
        frames,
        grid.ifft,
        frame_dt=frame_dt,
        n_discard=n_discard,
        cfl=cfl,
        dx=dx,
    )


def random_velocity(
    rng: np.random.Generator, n_traj: int, grid: SpectralGrid3D, k_peak: float = 3.0
) -> np.ndarray:
    """Random-phase divergence-free velocity, energy near |k| = k_peak, rms 1: [n_traj, 3, n, n,
    n]."""
    k = np.sqrt(grid.k2)
    amplitude = k**2 * np.exp(-((k / k_peak) ** 2))
    shape = (n_traj, 3, *grid.k2.shape)
    phase = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    u = grid.ifft(grid.project(amplitude * phase * grid.dealias))
    return u / np.sqrt((u**2).sum(axis=1, keepdims=True).mean(axis=(-3, -2, -1), keepdims=True))


def kolmogorov_forcing(n: int) -> np.ndarray:
    """F sin(k_f y) x̂ on the grid: [3, n, n, n]."""
    y = periodic_grid(n, LENGTH)
    f = np.zeros((3, n, n, n))
    f[0] = FORCING_AMPLITUDE * np.sin(FORCING_WAVENUMBER * y)[None, :, None]
    return f


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    require_positive(SPEC.name, params, "nu")
    grid = SpectralGrid3D(resolution, dtype=np.float32)
    u0 = random_velocity(rng, n_traj, grid)
    n_spin = math.ceil(SPIN_UP_TIME / SPEC.dt)
    u = integrate(u0, grid, params["nu"], kolmogorov_forcing(resolution), SPEC.dt, n_steps, n_spin)
    p = grid.pressure(u)  # [B, T, n, n, n]
    fields = [Field("pressure", 0, p), Field("velocity", 1, np.moveaxis(u, 2, -1))]
    time = SPEC.dt * np.arange(n_steps)
    return make_well_data(SPEC.name, ["x", "y", "z"], LENGTH, resolution, time, fields, params)


SPEC = SystemSpec(
    name="navier_stokes3d",
    n_spatial_dims=3,
    default_params={"nu": [0.03, 0.012]},
    resolution=32,
    n_steps=24,
    dt=0.3,
    description="3D Kolmogorov-forced incompressible NS (pressure, velocity), pseudo-spectral 32^3",
    run=run,
    n_traj=6,
    field_names=("pressure", "velocity_x", "velocity_y", "velocity_z"),
    min_resolution=16,
    regimes=(
        "nu 0.03 (Re 69): the Kolmogorov profile breaks into large meandering structures",
        "nu 0.012 (Re 434): 3D turbulence with small vortex tubes",
    ),
)
