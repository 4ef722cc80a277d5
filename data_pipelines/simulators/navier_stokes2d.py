"""2D incompressible Navier–Stokes, Kolmogorov-forced, in vorticity form on the periodic box [0,
2π)².

Equations (ω = ∂x v − ∂y u, velocity from the stream function ψ with −Δψ = ω, u = ∂yψ, v = −∂xψ)::

    ∂t ω + u·∇ω = ν Δω − α ω + f,      f = −k_f cos(k_f y)   (the curl of the body force sin(k_f y) x̂)

Method: pseudo-spectral (rfft2) with the 2/3 rule against aliasing; time integration by the
integrating-factor RK4 scheme, which treats the linear part L = −ν|k|² − α exactly (no viscous step
limit) and the advection + forcing with classical RK4.  The step follows an advective CFL of 1 set
once per saved frame from the current maximum speed.

Defaults (after Kochkov et al. 2021, PNAS): k_f = 4 and linear drag α = 0.1, which keeps the energy
bounded without a large-scale condensate.  Regimes by viscosity: ν = 1e-2 (Re = u_rms/(ν k_f) ≈ 25)
is weakly chaotic — the laminar Kolmogorov flow is unstable and meanders — while ν = 1e-3 (Re ≈ 250)
is turbulent with thin vorticity filaments.  At 64² ν = 1e-3 is under-resolved in the dissipation
range, but the drag and the 2/3 rule keep it stable; use ``--resolution 128`` for cleaner small
scales. The frame interval Δt = 0.16 gives next-frame persistence VRMSE on vorticity ≈ 0.23 (ν=1e-2)
and ≈ 0.57 (ν=1e-3) (≈ 0.18 and 0.35 averaged with the smoother velocity).  The first 10 time units
(one drag time; the enstrophy saturates after ≈ 5) are discarded so the frames sit on the attractor.
Saved fields: vorticity (t0) and velocity (t1), in arrays indexed [x, y].
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.simulators.common import (
    SystemSpec,
    if_rk4_integrate,
    make_well_data,
    wavenumbers,
)
from data_pipelines.well_format import Field, WellData

LENGTH = 2 * math.pi
FORCING_WAVENUMBER = 4
SPIN_UP_TIME = 10.0  # one drag time; the enstrophy saturates after ≈ 5
CFL = 1.0  # on |u|+|v|; RK4 is stable to 2.8 on the imaginary axis and the 2/3 rule trims k_max


class SpectralGrid:
    """Wavenumbers of an n² periodic grid for rfft2 over the last two axes (x, then y).  ``dtype``
    float32 halves the cost of the FFTs (used for datasets); float64 for the accuracy tests."""

    def __init__(self, n: int, length: float = LENGTH, dtype: type = np.float64):
        self.n, self.dtype = n, np.dtype(dtype)
        complex_dtype = np.result_type(self.dtype, np.complex64)
        kx = wavenumbers(n, length)[:, None]  # [n, 1]
        ky = wavenumbers(n, length, real=True)[None, :]  # [1, n//2+1]
        k2 = kx**2 + ky**2
        inv_k2 = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
        k_max = n // 2 * (2 * math.pi / length)
        dealias = (np.abs(kx) < 2 / 3 * k_max) & (np.abs(ky) < 2 / 3 * k_max)
        self.k2 = k2.astype(self.dtype)
        self.dealias = dealias.astype(self.dtype)
        # spectral operators, precomputed: ∂x, ∂y, and ω̂ → û = i ky ω̂/|k|², v̂ = −i kx ω̂/|k|²
        self.ddx, self.ddy = (1j * kx).astype(complex_dtype), (1j * ky).astype(complex_dtype)
        self.to_u, self.to_v = (
            (1j * ky * inv_k2).astype(complex_dtype),
            (-1j * kx * inv_k2).astype(complex_dtype),
        )

    def fft(self, a: np.ndarray) -> np.ndarray:
        return np.fft.rfft2(a.astype(self.dtype, copy=False), axes=(-2, -1))

    def ifft(self, a_hat: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(a_hat, s=(self.n, self.n), axes=(-2, -1))

    def velocity_hat(self, w_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(û, v̂) from ω̂: ψ̂ = ω̂/|k|², u = ∂yψ, v = −∂xψ."""
        return self.to_u * w_hat, self.to_v * w_hat

    def advection_hat(self, w_hat: np.ndarray) -> np.ndarray:
        """Dealiased transform of u·∇ω, products formed on the grid.  w_hat: [..., n, n//2+1]."""
        # one batched inverse FFT for u, v, ∂xω, ∂yω: [4, ..., n, n]
        stacked = np.stack(
            [self.to_u * w_hat, self.to_v * w_hat, self.ddx * w_hat, self.ddy * w_hat]
        )
        u, v, wx, wy = self.ifft(stacked)
        return self.fft(u * wx + v * wy) * self.dealias


def integrate(
    w: np.ndarray,
    grid: SpectralGrid,
    nu: float,
    drag: float,
    forcing: np.ndarray | None,
    frame_dt: float,
    n_frames: int,
    n_discard: int = 0,
    cfl: float = CFL,
) -> np.ndarray:
    """Advance vorticity w [B, n, n] by n_discard + n_frames steps of frame_dt; return the states
    after the last n_frames of them: [B, n_frames, n, n]."""
    lin = (-nu * grid.k2 - drag).astype(grid.dtype)  # exact linear decay rate per mode
    f_hat = 0.0 if forcing is None else grid.fft(forcing) * grid.dealias
    w_hat = grid.fft(w) * grid.dealias
    dx = LENGTH / grid.n

    def nonlinear(a_hat: np.ndarray) -> np.ndarray:
        return -grid.advection_hat(a_hat) + f_hat

    def speed(w_hat: np.ndarray) -> float:
        u_hat, v_hat = grid.velocity_hat(w_hat)
        return np.max(np.abs(grid.ifft(u_hat)) + np.abs(grid.ifft(v_hat)))

    frames = np.empty((w.shape[0], n_frames, grid.n, grid.n), dtype=grid.dtype)
    return if_rk4_integrate(
        w_hat,
        lin,
        nonlinear,
        speed,
        frames,
        grid.ifft,
        frame_dt=frame_dt,
        n_discard=n_discard,
        cfl=cfl,
        dx=dx,
    )


def random_vorticity(
    rng: np.random.Generator, n_traj: int, grid: SpectralGrid, k_peak: float = 4.0
):
    """Random-phase vorticity with energy near |k| = k_peak and rms velocity 1: [n_traj, n, n]."""
    k = np.sqrt(grid.k2)
    amplitude = k * np.exp(-((k / k_peak) ** 2))  # |ω̂| ~ k e^{-(k/k0)²}
    phase = rng.standard_normal((n_traj, *grid.k2.shape)) + 1j * rng.standard_normal(
        (n_traj, *grid.k2.shape)
    )
    w = grid.ifft(amplitude * phase * grid.dealias)
    u_hat, v_hat = grid.velocity_hat(grid.fft(w))
    u_rms = np.sqrt(
        (grid.ifft(u_hat) ** 2 + grid.ifft(v_hat) ** 2).mean(axis=(-2, -1), keepdims=True)
    )
    return w / u_rms


def kolmogorov_forcing(n: int, k_f: int = FORCING_WAVENUMBER) -> np.ndarray:
    y = np.arange(n) * (LENGTH / n)
    return np.broadcast_to(-k_f * np.cos(k_f * y)[None, :], (n, n)).copy()


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    nu, drag = params["nu"], params["drag"]
    grid = SpectralGrid(resolution, dtype=np.float32)
    w0 = random_vorticity(rng, n_traj, grid)
    n_spin = math.ceil(SPIN_UP_TIME / SPEC.dt)
    # [B, T, n, n]
    w = integrate(w0, grid, nu, drag, kolmogorov_forcing(resolution), SPEC.dt, n_steps, n_spin)
    u_hat, v_hat = grid.velocity_hat(grid.fft(w))
    velocity = np.stack([grid.ifft(u_hat), grid.ifft(v_hat)], axis=-1)  # [B, T, n, n, 2]
    fields = [Field("vorticity", 0, w), Field("velocity", 1, velocity)]
    time = SPEC.dt * np.arange(n_steps)
    return make_well_data(SPEC.name, ["x", "y"], LENGTH, resolution, time, fields, params)


SPEC = SystemSpec(
    name="navier_stokes2d",
    n_spatial_dims=2,
    default_params={"nu": [1e-2, 1e-3], "drag": [0.1]},
    resolution=64,
    n_steps=64,
    dt=0.16,
    description="Kolmogorov-forced incompressible NS (vorticity), pseudo-spectral; nu: chaotic → turbulent",
    run=run,
    field_names=("vorticity", "velocity_x", "velocity_y"),
    regimes=(
        "nu=1e-2: weakly chaotic meandering jets (Re~25)",
        "nu=1e-3: turbulent filaments (Re~250)",
    ),
)
