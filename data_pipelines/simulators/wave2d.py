"""2D linear acoustics (the wave equation in first-order form) on the periodic unit square.

Equations (unit density; pressure p, particle velocity v, sound speed c)::

    ∂t p + c² ∇·v = 0,    ∂t v + ∇p = 0      ⇒   ∂tt p = c² Δp

Method: exact in time and spectral in space.  Per Fourier mode k the longitudinal velocity a = k̂·v̂
and p̂ form a harmonic oscillator of frequency ω = c|k|: p̂(t) = p̂₀ cos ωt − i c a₀ sin ωt,  a(t) =
a₀ cos ωt − i (p̂₀/c) sin ωt;  the transverse (curl) part of v̂ and the k = 0 mode do not change.
No time step, so no CFL limit and no numerical dispersion: the travelling plane wave p = cos(k·x −
ωt), v = k̂ p / c is reproduced to round-off, and the acoustic energy ½∫(p²/c² + |v|²) is conserved
(both checked by the tests).

Initial condition: four Gaussian pressure pulses (random centres, signs, widths σ ∈ [0.03, 0.06]) at
rest; each radiates a ring that crosses the periodic box and interferes with the others, so the
field keeps moving forever.  Regimes by sound speed: c = 0.5 (slow rings, persistence VRMSE ≈ 0.2)
and c = 1 (fast, ≈ 0.45) at the frame interval Δt = 0.02; the first 0.2 time units are skipped so
the pulses have already split into rings.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.simulators.common import SystemSpec, make_well_data, periodic_grid, wavenumbers
from data_pipelines.well_format import Field, WellData

LENGTH = 1.0
N_PULSES = 4
SPIN_UP_TIME = 0.2


def propagate(
    p0: np.ndarray, v0: np.ndarray, c: float, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact solution at the given times.  p0: [B, n, n], v0: [B, n, n, 2] → p [B, T, n, n], v [B,
    T, n, n, 2]."""
    n = p0.shape[-1]
    kx = wavenumbers(n, LENGTH)[:, None]  # [n, 1]
    ky = wavenumbers(n, LENGTH, real=True)[None, :]  # [1, n//2+1]
    k_abs = np.sqrt(kx**2 + ky**2)
    safe = np.where(k_abs > 0, k_abs, 1.0)
    unit_x, unit_y = kx / safe, ky / safe  # k̂, zero at k = 0
    fft = lambda a: np.fft.rfft2(a, axes=(-2, -1))
    p_hat, vx_hat, vy_hat = fft(p0), fft(v0[..., 0]), fft(v0[..., 1])
    a_hat = unit_x * vx_hat + unit_y * vy_hat  # longitudinal velocity
    tx_hat, ty_hat = vx_hat - unit_x * a_hat, vy_hat - unit_y * a_hat  # transverse part, constant
    phase = c * k_abs * times[:, None, None]  # ω t: [T, n, n//2+1]
    cos, sin = np.cos(phase), np.sin(phase)
    p_hat, a_hat = p_hat[:, None], a_hat[:, None]  # [B, 1, ...] broadcast over time
    p_t = p_hat * cos - 1j * c * a_hat * sin
    a_t = a_hat * cos - 1j * (p_hat / c) * sin
    ifft = lambda a: np.fft.irfft2(a, s=(n, n), axes=(-2, -1))
    v_t = np.stack(
        [ifft(unit_x * a_t + tx_hat[:, None]), ifft(unit_y * a_t + ty_hat[:, None])], axis=-1
    )
    return ifft(p_t), v_t


def acoustic_energy(p: np.ndarray, v: np.ndarray, c: float) -> np.ndarray:
    """½ ∫ (p²/c² + |v|²) dx over the unit square; p: [..., n, n], v: [..., n, n, 2]."""
    return 0.5 * (p**2 / c**2 + (v**2).sum(-1)).mean(axis=(-2, -1)) * LENGTH**2


def random_pulses(rng: np.random.Generator, n_traj: int, n: int) -> np.ndarray:
    """Sum of N_PULSES periodic Gaussian bumps per trajectory: [n_traj, n, n]."""
    x = periodic_grid(n, LENGTH)
    centres = rng.uniform(0, LENGTH, (n_traj, N_PULSES, 2, 1))
    widths = rng.uniform(0.03, 0.06, (n_traj, N_PULSES, 1, 1))
    signs = rng.choice([-1.0, 1.0], (n_traj, N_PULSES, 1, 1))
    d = (x - centres + LENGTH / 2) % LENGTH - LENGTH / 2  # periodic distance: [B, P, 2, n]
    bumps = np.exp(-(d[:, :, 0, :, None] ** 2 + d[:, :, 1, None, :] ** 2) / (2 * widths**2))
    return (signs * bumps).sum(axis=1)


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    c = params["c"]
    p0 = random_pulses(rng, n_traj, resolution)
    v0 = np.zeros((*p0.shape, 2))
    p, v = propagate(p0, v0, c, SPIN_UP_TIME + SPEC.dt * np.arange(n_steps))
    fields = [Field("pressure", 0, p), Field("velocity", 1, v)]
    time = SPEC.dt * np.arange(n_steps)
    return make_well_data(SPEC.name, ["x", "y"], LENGTH, resolution, time, fields, params)


SPEC = SystemSpec(
    name="wave2d",
    n_spatial_dims=2,
    default_params={"c": [0.5, 1.0]},
    resolution=64,
    n_steps=64,
    dt=0.02,
    description="Linear acoustics (wave equation: pressure, velocity), exact spectral; c: slow → fast waves",
    run=run,
    field_names=("pressure", "velocity_x", "velocity_y"),
    regimes=("c=0.5: slow interfering rings", "c=1: fast interfering rings"),
)
