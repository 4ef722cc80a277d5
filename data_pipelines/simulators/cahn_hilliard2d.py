"""Cahn–Hilliard phase separation and coarsening on the periodic square [0, 64)².

Equation (c ∈ [−1, 1]: the order parameter of a binary mixture, M: mobility, ε: interface width,
T: temperature; the Cahn–Hilliard–Cook equation, Cook 1970, Acta Metall. 18:297)::

    ∂t c = M Δμ + ∇·(√(2MT) η),    μ = c³ − c − ε² Δc

with η a vector of space-time white noises.  At T = 0 it is a gradient flow (H⁻¹) of the free
energy F[c] = ∫ ¼ (c² − 1)² + ε²/2 |∇c|² dx, so F never increases; the noise is a divergence, so
∫c dx is conserved with or without it.  From a well-mixed state with small noise the mixture
separates (spinodal decomposition, fastest-growing wavelength 2π√2 ε) and the domains then coarsen
as t^{1/3}.

Method: Fourier pseudo-spectral in space; in time the first-order stabilised semi-implicit scheme
of Shen & Yang (2010, DCDS-A 28:1669): the stiff ε²k⁴ term implicit, the nonlinearity and the
noise explicit, plus S (ĉⁿ⁺¹ − ĉⁿ) with S = 2 ≥ max f''/2 on [−1, 1]::

    (1 + h M k² (S + ε² k²)) ĉⁿ⁺¹ = (1 + h M k² S) ĉⁿ − h M k² (c³ − c)^ⁿ + i k·ξ̂ⁿ

which at T = 0 is unconditionally energy stable and in every case leaves the k = 0 mode (the mass)
untouched, so ∫c is conserved to round-off (the tests check both, and the noise's amplitude against
the scheme's exact stationary structure factor in the one-phase region, which tends to
Ornstein–Zernike T/(f'' + ε²k²) as h → 0; at the dataset's step the stabilisation damps the fast
large-k fluctuations, so T is calibrated only at long wavelengths). The step is h = 0.5 ε²/M (the
fastest linear growth time is 4 ε²/M). Hand-written, for the reasons given in :mod:`.etdrk4`: the
scheme is a few lines of numpy once the Fourier symbols exist, and a finite-difference library would
need explicit steps ~ dx⁴ or an implicit solve for the fourth-order operator.

Defaults: 64² (dx = 1), M = 1, T = 0 (deterministic; T = 0.03 is the noisy variant measured below).
Mobility only rescales time (t → M t), so the default sweep keeps one value and spans the geometry
instead: ε ∈ {1, 1.5} (fine or coarse domains; the interface √2 ε spans 1.4–2 cells) × mean
concentration c̄ ∈ {0, 0.3} (critical quench: a bicontinuous labyrinth; off-critical: droplets of
the minority phase that ripen).  Deterministic coarsening slows down: the interfaces move as
t^{-2/3}, and the next-frame persistence VRMSE depends on the frame interval over the time reached
(Δ/t) only, so with uniform frames the last of a window of N frames moves by about f(1/N) whatever Δ
is (measured at T = 0: ≈ 0.02 at N = 64, 0.023–0.031 (minimum) at N = 32; even N = 16 leaves
droplets at 0.04).  With T > 0 thermal noise keeps the interfaces fluctuating (capillary waves)
while they coarsen; comparing lag 1 with lag 4, about half of the last frames' change is that jitter
and half the coarsening.  A trajectory is 32 frames 25 time units apart after a 50-unit spin-up
(spinodal decomposition complete). Measured (4 trajectories per corner, minimum over the last 8
frame pairs, T = 0 → 0.03): (ε, c̄) = (1, 0) 0.031 → 0.078, (1, 0.3) 0.027 → 0.083, (1.5, 0) 0.031 →
0.055, (1.5, 0.3) 0.023 → 0.064; lag-4 over lag-1 persistence 1.9–2.5 (coherent drift alone gives ≈
4, jitter ≈ 1).
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.simulators.common import SystemSpec, make_well_data, wavenumbers
from data_pipelines.well_format import Field, WellData

LENGTH = 64.0
# S ≥ max f''(c)/2 = 1 on |c| ≤ 1 (Shen & Yang); 2 leaves room for overshoot past ±1
STABILISATION = 2.0
STEP_IN_EPS2_OVER_M = 0.5  # h = 0.5 ε²/M
SPIN_UP_TIME = 50.0
NOISE = 0.05  # amplitude of the initial fluctuations around c̄
# Deterministic by default: T = 0.03 keeps interfaces fluctuating while coarsening slows down, but
# 65–80 % of the frame-to-frame change is then noise (--param temperature=0.03 turns it on).
TEMPERATURE = 0.0


class CahnHilliard:
    """Fourier symbols of an n² grid over the box (rfft2 over the last two axes)."""

    def __init__(self, n: int, mobility: float, epsilon: float):
        self.n, self.mobility, self.epsilon = n, mobility, epsilon
        kx = wavenumbers(n, LENGTH)[:, None]
        ky = wavenumbers(n, LENGTH, real=True)[None, :]
        self.kx, self.ky, self.k2 = kx, ky, kx**2 + ky**2

    def fft(self, a: np.ndarray) -> np.ndarray:
        return np.fft.rfft2(a, axes=(-2, -1))

    def ifft(self, a_hat: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(a_hat, s=(self.n, self.n), axes=(-2, -1))

    def free_energy(self, c: np.ndarray) -> np.ndarray:
        """F = ∫ ¼(c² − 1)² + ε²/2 |∇c|² dx over the box, per leading index.  c: [..., n, n]."""
        c_hat = self.fft(c)
        grad2 = self.ifft(1j * self.kx * c_hat) ** 2 + self.ifft(1j * self.ky * c_hat) ** 2
        density = 0.25 * (c**2 - 1) ** 2 + 0.5 * self.epsilon**2 * grad2
        return density.mean(axis=(-2, -1)) * LENGTH**2

    def integrate(
        self,
        c: np.ndarray,
        frame_dt: float,
        n_frames: int,
        n_discard: int = 0,
        temperature: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Advance c [B, n, n] by n_discard + n_frames frames of frame_dt; return the last n_frames.

        temperature > 0 adds Cook's conserved noise ∇·(√(2MT) η) (η: a vector of space-time white
        noises, drawn from rng): a divergence has no k = 0 mode, so the mass stays exact."""
        if temperature > 0 and rng is None:
            raise ValueError("temperature > 0 needs an rng for the noise")
        n_sub = max(
            1, math.ceil(frame_dt * self.mobility / (STEP_IN_EPS2_OVER_M * self.epsilon**2))
        )
        h = frame_dt / n_sub
        mk2h = h * self.mobility * self.k2
        explicit = 1 + mk2h * STABILISATION
        implicit = 1 / (1 + mk2h * (STABILISATION + self.epsilon**2 * self.k2))
        # each flux component: white noise of variance 2 M T h / dx² per cell over a step
        kick = math.sqrt(2 * self.mobility * temperature * h) * self.n / LENGTH
        c_hat = self.fft(c)
        frames = np.empty((c.shape[0], n_frames, self.n, self.n))
        for i in range(-n_discard, n_frames):
            for _ in range(n_sub):
                c = self.ifft(c_hat)
                update = explicit * c_hat - mk2h * self.fft(c**3 - c)
                if temperature > 0:  # Euler–Maruyama: the noise enters the explicit side
                    flux_x, flux_y = (
                        self.fft(kick * rng.standard_normal(c.shape, np.float32)) for _ in range(2)
                    )
                    update += 1j * (self.kx * flux_x + self.ky * flux_y)
                c_hat = update * implicit
            if i >= 0:
                frames[:, i] = self.ifft(c_hat)
        return frames


def check_params(params: dict[str, float]) -> None:
    if params["temperature"] < 0:
        raise DataError(
            f"cahn_hilliard2d: parameter temperature={params['temperature']:g} must be >= 0"
        )
    for name in ("mobility", "epsilon"):
        if params[name] <= 0:
            raise DataError(f"cahn_hilliard2d: parameter {name}={params[name]:g} must be > 0")
    if not -1 < params["mean_concentration"] < 1:
        raise DataError(
            f"cahn_hilliard2d: parameter mean_concentration={params['mean_concentration']:g} must lie in "
            "(-1, 1) (outside it the mixture is a single phase)"
        )


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    check_params(params)
    dx = LENGTH / resolution
    if params["epsilon"] < 0.5 * dx:
        raise DataError(
            f"cahn_hilliard2d: parameter epsilon={params['epsilon']:g} is under half a cell (dx={dx:g}) at "
            f"resolution {resolution}: the interfaces would not be resolved; raise epsilon or --resolution"
        )
    solver = CahnHilliard(resolution, params["mobility"], params["epsilon"])
    c0 = params["mean_concentration"] + NOISE * rng.uniform(-1, 1, (n_traj, resolution, resolution))
    c0 += params["mean_concentration"] - c0.mean(axis=(-2, -1), keepdims=True)  # exact mean c̄
    n_spin = round(SPIN_UP_TIME / SPEC.dt)
    temperature = params["temperature"]
    # [B, T, n, n]
    c = solver.integrate(c0, SPEC.dt, n_steps, n_spin, temperature=temperature, rng=rng)
    time = SPEC.dt * np.arange(n_steps)
    fields = [Field("concentration", 0, c)]
    return make_well_data(SPEC.name, ["x", "y"], LENGTH, resolution, time, fields, params)


SPEC = SystemSpec(
    name="cahn_hilliard2d",
    n_spatial_dims=2,
    default_params={
        "mobility": [1.0],
        "epsilon": [1.0, 1.5],
        "mean_concentration": [0.0, 0.3],
        "temperature": [TEMPERATURE],
    },
    resolution=64,
    n_steps=32,
    dt=25.0,
    description="Cahn-Hilliard-Cook phase separation (thermal noise), semi-implicit spectral; "
    "(epsilon, mean): labyrinths, droplets",
    run=run,
    field_names=("concentration",),
    min_resolution=32,  # dx = 2: the default epsilon = 1 is then half a cell
    regimes=("bicontinuous labyrinth coarsening", "droplet ripening", "fine vs coarse domains"),
)
