"""2D incompressible periodic shear layers with a passive tracer, on the periodic unit square.

Equations (velocity u = (u, v), vorticity ω = ∂x v − ∂y u, tracer s; as The Well's ``shear_flow``)::

    ∂t ω + u·∇ω = ν Δω,        ∂t s + u·∇s = D Δs,        ν = 1/Reynolds,  D = ν/Schmidt

and the pressure from the divergence of the momentum equation, Δp = −∂i∂j(ui uj) (zero mean).

Method: the Fourier pseudo-spectral vorticity solver of :mod:`navier_stokes2d` (2/3 dealiasing,
integrating-factor RK4 that treats viscosity and tracer diffusion exactly), with the tracer advanced
in the same Runge–Kutta stages.  The Well made this dataset with Dedalus; Dedalus (and its MPI/FFTW
build) has no wheel for this machine, and on a periodic box its Fourier basis is this same method.

Initial condition (after The Well's): two shear layers u = ±1 at y = 1/4 and 3/4, each a tanh of
random thickness δ ∈ [0.03, 0.04], seeded by a divergence-free stream-function bump
ψ' ∝ sin(2π m x + φ) of random wavenumber m ∈ {1, 2} (k δ ≤ 0.5, all well inside the
Kelvin–Helmholtz band k δ < 1) and phase on each layer; the tracer starts as the shear profile.  The
whole flow drifts at a random speed U₀ ∈ ±[0.3, 0.6]: without it the cat's-eye billows sit still
once rolled up, and the velocity frames hardly change (persistence VRMSE of u ≈ 0.01).  The first 2
time units (the linear growth) are discarded; the billows then roll up, pair and mix.

Regimes: Reynolds = U L/ν = 3e3 (smooth billows that pair) and 1e4 (thin braids, secondary
roll-ups; at 64² the thinnest braids reach the grid scale, where the dealiased truncation keeps
energy and enstrophy bounded); Schmidt 0.1 (the tracer blurs faster than the vorticity) and 0.3
(tracer filaments; at Péclet = Re·Sc = 3e3 the 64² grid under-resolves the tracer, whose spectral
overshoot stays ≤ 15 % of its range).  Frames are Δt = 0.15 apart.
Saved fields: tracer, pressure (t0) and velocity (t1), arrays indexed [x, y].
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.simulators.common import (
    SystemSpec,
    make_well_data,
    periodic_grid,
    require_positive,
)
from data_pipelines.simulators.navier_stokes2d import SpectralGrid
from data_pipelines.well_format import Field, WellData

LENGTH = 1.0
CFL = 1.0  # on |u|+|v|, as in navier_stokes2d
SPIN_UP_TIME = 2.0  # the linear growth of the instability, in which the frames hardly change


def pressure_hat(grid: SpectralGrid, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """p̂ = −ki kj (ui uj)^ / |k|² (zero mean): the pressure that keeps u divergence-free."""
    kx, ky = grid.ddx / 1j, grid.ddy / 1j
    inv_k2 = np.where(grid.k2 > 0, 1.0 / np.where(grid.k2 > 0, grid.k2, 1.0), 0.0)
    uu, uv, vv = grid.fft(u * u), grid.fft(u * v), grid.fft(v * v)
    return -(kx * kx * uu + 2 * kx * ky * uv + ky * ky * vv) * inv_k2 * grid.dealias


def integrate(
    w: np.ndarray,
    s: np.ndarray,
    grid: SpectralGrid,
    nu: float,
    diffusivity: float,
    frame_dt: float,
    n_frames: int,
    n_discard: int = 0,
    cfl: float = CFL,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance vorticity w and tracer s [B, n, n] by n_discard + n_frames steps of frame_dt; return
    both after the last n_frames of them: [B, n_frames, n, n] each."""
    w_hat, s_hat = grid.fft(w) * grid.dealias, grid.fft(s) * grid.dealias
    dx = LENGTH / grid.n

    def nonlinear(a_hat: np.ndarray, b_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # one batched inverse FFT: u, v, ∂xω, ∂yω, ∂xs, ∂ys
        stacked = np.stack(
            [grid.to_u * a_hat, grid.to_v * a_hat, grid.ddx * a_hat, grid.ddy * a_hat]
        )
        stacked = np.concatenate([stacked, np.stack([grid.ddx * b_hat, grid.ddy * b_hat])])
        u, v, wx, wy, sx, sy = grid.ifft(stacked)
        return -grid.fft(u * wx + v * wy) * grid.dealias, -grid.fft(u * sx + v * sy) * grid.dealias

    frames_w = np.empty((w.shape[0], n_frames, grid.n, grid.n), dtype=grid.dtype)
    frames_s = np.empty_like(frames_w)
    for t in range(-n_discard, n_frames):
        speed = np.max(np.abs(grid.ifft(grid.to_u * w_hat)) + np.abs(grid.ifft(grid.to_v * w_hat)))
        n_sub = max(1, math.ceil(frame_dt * speed / (cfl * dx)))
        h = frame_dt / n_sub
        ew, ew2 = np.exp(-nu * grid.k2 * h), np.exp(-nu * grid.k2 * h / 2)
        es, es2 = np.exp(-diffusivity * grid.k2 * h), np.exp(-diffusivity * grid.k2 * h / 2)
        h = grid.dtype.type(h)
        for _ in range(n_sub):  # integrating-factor RK4 on the pair (ω̂, ŝ)
            aw, as_ = nonlinear(w_hat, s_hat)
            bw, bs = nonlinear(ew2 * (w_hat + 0.5 * h * aw), es2 * (s_hat + 0.5 * h * as_))
            cw, cs = nonlinear(ew2 * w_hat + 0.5 * h * bw, es2 * s_hat + 0.5 * h * bs)
            dw, ds = nonlinear(ew * w_hat + h * ew2 * cw, es * s_hat + h * es2 * cs)
            w_hat = ew * w_hat + h / 6 * (ew * aw + 2 * ew2 * (bw + cw) + dw)
            s_hat = es * s_hat + h / 6 * (es * as_ + 2 * es2 * (bs + cs) + ds)
        if t >= 0:
            frames_w[:, t], frames_s[:, t] = grid.ifft(w_hat), grid.ifft(s_hat)
    return frames_w, frames_s


def shear_layers(
    rng: np.random.Generator, n_traj: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two perturbed tanh shear layers per trajectory, drifting together at a random speed:
    (u, v, tracer) [n_traj, n, n] each, the tracer starting as the shear profile.  The perturbation
    is a stream function ψ' = A sin(2π m x + φ) exp(−((y − y_k)/0.1)²) per layer, so all of it is
    divergence-free and feeds the instability."""
    x = periodic_grid(n, LENGTH)[:, None]
    y = periodic_grid(n, LENGTH)[None, :]
    u, v, tracer = np.empty((n_traj, n, n)), np.empty((n_traj, n, n)), np.empty((n_traj, n, n))
    for b in range(n_traj):
        delta = rng.uniform(0.03, 0.04)
        profile = np.where(y < 0.5, np.tanh((y - 0.25) / delta), np.tanh((0.75 - y) / delta))
        drift = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6)
        u[b], v[b], tracer[b] = profile + drift, 0.0, profile
        for y_layer in (0.25, 0.75):
            m, phase = rng.integers(1, 3), rng.uniform(0, 2 * math.pi)
            amplitude = rng.uniform(0.02, 0.04)
            envelope = np.exp(-(((y - y_layer) / 0.1) ** 2))
            arg = 2 * math.pi * m * x + phase
            # u' = ∂yψ', v' = −∂xψ'
            u[b] += amplitude * np.sin(arg) * envelope * (-2 * (y - y_layer) / 0.1**2)
            v[b] -= amplitude * 2 * math.pi * m * np.cos(arg) * envelope
    return u, v, tracer


def vorticity_from_velocity(grid: SpectralGrid, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """ω = ∂x v − ∂y u, spectrally (its divergence-free part is all the solver keeps)."""
    return grid.ifft(grid.ddx * grid.fft(v) - grid.ddy * grid.fft(u))


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    require_positive(SPEC.name, params, "Reynolds", "Schmidt")
    nu = 1.0 / params["Reynolds"]
    grid = SpectralGrid(resolution, length=LENGTH, dtype=np.float32)
    u0, v0, s0 = shear_layers(rng, n_traj, resolution)
    n_spin = math.ceil(SPIN_UP_TIME / SPEC.dt)
    w0 = vorticity_from_velocity(grid, u0, v0)
    w, s = integrate(w0, s0, grid, nu, nu / params["Schmidt"], SPEC.dt, n_steps, n_discard=n_spin)
    w_hat = grid.fft(w)
    u, v = grid.ifft(grid.to_u * w_hat), grid.ifft(grid.to_v * w_hat)  # [B, T, n, n]
    p = grid.ifft(pressure_hat(grid, u, v))
    fields = [
        Field("tracer", 0, s),
        Field("pressure", 0, p),
        Field("velocity", 1, np.stack([u, v], axis=-1)),
    ]
    time = SPEC.dt * np.arange(n_steps)
    return make_well_data(SPEC.name, ["x", "y"], LENGTH, resolution, time, fields, params)


SPEC = SystemSpec(
    name="shear_flow2d",
    n_spatial_dims=2,
    default_params={"Reynolds": [3e3, 1e4], "Schmidt": [0.1, 0.3]},
    resolution=64,
    n_steps=40,
    dt=0.15,
    description="Periodic shear layers + passive tracer (incompressible NS), pseudo-spectral; Kelvin-Helmholtz",
    run=run,
    field_names=("tracer", "pressure", "velocity_x", "velocity_y"),
    n_traj=10,
    min_resolution=32,
    regimes=(
        "Reynolds 3e3: layers roll up into smooth billows that pair",
        "Reynolds 1e4: thin braids, secondary roll-ups",
        "Schmidt 0.1: diffuse tracer; Schmidt 0.3: tracer filaments",
    ),
)
