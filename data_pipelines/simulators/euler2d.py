"""2D compressible Euler equations: Riemann problems with four constant quadrants, periodic unit
square.

Equations (density ρ, momentum m = ρu, total energy E, ideal gas of ratio of specific heats γ)::

    ∂t ρ + ∇·m = 0,   ∂t m + ∇·(m⊗u + p I) = 0,   ∂t E + ∇·((E + p) u) = 0,
    p = (γ − 1)(E − ½ ρ|u|²)

as The Well's ``euler_multi_quadrants_periodicBC`` (same field names; The Well ran Clawpack).

Method: conservative finite volumes — MUSCL reconstruction of the primitive variables (ρ, u, v, p)
with the minmod limiter, the HLLC approximate Riemann solver (Toro 2009, §10.4) at every face,
unsplit, and the two-stage SSP Runge–Kutta (Heun) step at CFL 0.4 on the sum of the x and y signal
rates (|u| + c)/Δx + (|v| + c)/Δy.  Faces whose reconstructed density or pressure would be ≤ 0 fall
back to first order.  Every
update is a difference of face fluxes, so with periodic boundaries the totals of ρ, m and E change
only by round-off (tested); ``boundary="transmissive"`` (zero-gradient ghost cells) is there for the
1D shock-tube test against the exact Riemann solution (:func:`exact_riemann`).  Hand-written in
numpy because Clawpack has no wheel here (it builds Fortran at install time).

Initial condition: the square is cut at a random point (x₀, y₀) ∈ [0.3, 0.7]² into four quadrants
(periodic, so each cut line has a second interface at the box edge); each quadrant gets a random
state: ρ ∈ [0.2, 2], p = 10^U(0, log10 pressure_jump), velocity components ∈ [−0.5, 0.5].  Shocks,
rarefactions and contact lines leave every interface and collide at the corners.
Regimes: pressure_jump = 2 (weak shocks, nearly acoustic waves, smooth vortical contacts) and 20
(strong shocks, jets along the contact lines); γ = 1.4 (diatomic gas) and 1.13 (a soft, more
compressible gas: slower sound, denser shocked shells).  The default grid is 48² (a 64² dataset
costs 1.8× as much).  Frames are 0.015 apart (The Well's interval), from t = 0.
Saved fields: density, energy, pressure (t0) and momentum (t1), arrays indexed [x, y].
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.simulators.common import (
    SystemSpec,
    make_well_data,
    periodic_grid,
    require_positive,
)
from data_pipelines.well_format import Field, WellData

LENGTH = 1.0
CFL = 0.4


def primitives(q: np.ndarray, gamma: float) -> np.ndarray:
    """(ρ, ρu, ρv, E) → (ρ, u, v, p) along axis -3 of [..., 4, nx, ny]."""
    rho, mx, my, energy = q[..., 0, :, :], q[..., 1, :, :], q[..., 2, :, :], q[..., 3, :, :]
    u, v = mx / rho, my / rho
    return np.stack([rho, u, v, (gamma - 1) * (energy - 0.5 * rho * (u**2 + v**2))], axis=-3)


def conserved(w: np.ndarray, gamma: float) -> np.ndarray:
    rho, u, v, p = w[..., 0, :, :], w[..., 1, :, :], w[..., 2, :, :], w[..., 3, :, :]
    return np.stack([rho, rho * u, rho * v, p / (gamma - 1) + 0.5 * rho * (u**2 + v**2)], axis=-3)


def hllc_flux(wl: np.ndarray, wr: np.ndarray, gamma: float) -> np.ndarray:
    """HLLC flux along the first velocity component; wl, wr: (ρ, u_normal, u_tangent, p) on axis
    0."""
    (rl, ul, vl, pl), (rr, ur, vr, pr) = wl, wr
    el = pl / (gamma - 1) + 0.5 * rl * (ul**2 + vl**2)
    er = pr / (gamma - 1) + 0.5 * rr * (ur**2 + vr**2)
    cl, cr = np.sqrt(gamma * pl / rl), np.sqrt(gamma * pr / rr)
    sl, sr = np.minimum(ul - cl, ur - cr), np.maximum(ul + cl, ur + cr)  # Davis wave-speed bounds
    ml, mr = rl * (sl - ul), rr * (sr - ur)
    s_star = (pr - pl + ul * ml - ur * mr) / (ml - mr)
    flux_l = np.stack([rl * ul, rl * ul**2 + pl, rl * ul * vl, ul * (el + pl)])
    flux_r = np.stack([rr * ur, rr * ur**2 + pr, rr * ur * vr, ur * (er + pr)])

    def star_flux(flux, rho, u, v, p, energy, s, m):
        factor = m / (s - s_star)  # ρ_K (S_K − u_K)/(S_K − S*)
        q = np.stack([rho, rho * u, rho * v, energy])
        q_star = factor * np.stack(
            [np.ones_like(rho), s_star, v, energy / rho + (s_star - u) * (s_star + p / m)]
        )
        return flux + s * (q_star - q)

    fl_star = star_flux(flux_l, rl, ul, vl, pl, el, sl, ml)
    fr_star = star_flux(flux_r, rr, ur, vr, pr, er, sr, mr)
    return np.where(
        sl >= 0, flux_l, np.where(s_star >= 0, fl_star, np.where(sr > 0, fr_star, flux_r))
    )


def minmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(a * b > 0, np.sign(a) * np.minimum(np.abs(a), np.abs(b)), 0.0)


def face_fluxes(w: np.ndarray, axis: int, gamma: float, boundary: str) -> np.ndarray:
    """Fluxes through the n+1 faces along ``axis`` (-2: x, -1: y) of primitive w [B, 4, nx, ny]."""
    pad = [(0, 0)] * w.ndim
    pad[axis] = (2, 2)
    wp = np.pad(w, pad, mode="wrap" if boundary == "periodic" else "edge")
    n = w.shape[axis]
    take = lambda a, lo, hi: np.take(a, np.arange(lo, hi), axis=axis)
    slope = minmod(take(wp, 1, n + 3) - take(wp, 0, n + 2), take(wp, 2, n + 4) - take(wp, 1, n + 3))
    centre = take(wp, 1, n + 3)  # cells −1 .. n
    left = take(centre + 0.5 * slope, 0, n + 1)  # state left of faces −½ .. n−½
    right = take(centre - 0.5 * slope, 1, n + 2)
    first_left, first_right = take(centre, 0, n + 1), take(centre, 1, n + 2)
    bad = (left[:, [0, 3]] <= 0).any(axis=1, keepdims=True) | (right[:, [0, 3]] <= 0).any(
        axis=1, keepdims=True
    )
    left, right = np.where(bad, first_left, left), np.where(bad, first_right, right)
    order = [0, 1, 2, 3] if axis == -2 else [0, 2, 1, 3]  # the normal velocity goes second
    flux = hllc_flux(np.moveaxis(left[:, order], 1, 0), np.moveaxis(right[:, order], 1, 0), gamma)
    return np.moveaxis(flux, 0, 1)[:, order]


def tendency(q: np.ndarray, gamma: float, dx: float, dy: float, boundary: str) -> np.ndarray:
    """−∇·F as flux differences; q [B, 4, nx, ny]."""
    w = primitives(q, gamma)
    fx, fy = face_fluxes(w, -2, gamma, boundary), face_fluxes(w, -1, gamma, boundary)
    return -np.diff(fx, axis=-2) / dx - np.diff(fy, axis=-1) / dy


def stable_dt(q: np.ndarray, gamma: float, dx: float, dy: float) -> float:
    rho, u, v, p = np.moveaxis(primitives(q, gamma), -3, 0)
    c = np.sqrt(gamma * p / rho)
    return CFL / float(np.max((np.abs(u) + c) / dx + (np.abs(v) + c) / dy))


def integrate(
    q: np.ndarray, gamma: float, frame_dt: float, n_frames: int, boundary: str = "periodic"
) -> np.ndarray:
    """Advance conserved q [B, 4, nx, ny] on the unit square (cells 1/nx × 1/ny) by n_frames ×
    frame_dt (SSP-RK2, adaptive steps landing on every frame time); return each frame: [B, n_frames,
    4, nx, ny]."""
    if boundary not in ("periodic", "transmissive"):
        raise DataError(f"euler2d: boundary {boundary!r}: expected periodic or transmissive")
    dx, dy = LENGTH / q.shape[-2], LENGTH / q.shape[-1]
    frames = np.empty((q.shape[0], n_frames, *q.shape[1:]), dtype=q.dtype)
    for t in range(n_frames):
        remaining = frame_dt
        while remaining > 1e-12 * frame_dt:
            h = min(stable_dt(q, gamma, dx, dy), remaining)
            q1 = q + h * tendency(q, gamma, dx, dy, boundary)
            q = 0.5 * (q + q1 + h * tendency(q1, gamma, dx, dy, boundary))
            remaining -= h
        if not np.isfinite(q).all():
            raise DataError(f"euler2d: the solution became non-finite at frame {t} (gamma={gamma})")
        frames[:, t] = q
    return frames


def random_quadrants(
    rng: np.random.Generator, n_traj: int, n: int, pressure_jump: float
) -> np.ndarray:
    """Primitive (ρ, u, v, p) of random four-quadrant states: [n_traj, 4, n, n]."""
    x = periodic_grid(n, LENGTH)  # cell centres
    w = np.empty((n_traj, 4, n, n))
    for b in range(n_traj):
        x0, y0 = rng.uniform(0.3, 0.7, size=2)
        # [n, n] in 0..3
        quadrant = (x[:, None] >= x0).astype(int) + 2 * (x[None, :] >= y0).astype(int)
        rho = rng.uniform(0.2, 2.0, 4)
        p = 10 ** rng.uniform(0, math.log10(pressure_jump), 4)
        u, v = rng.uniform(-0.5, 0.5, (2, 4))
        w[b] = np.stack([rho[quadrant], u[quadrant], v[quadrant], p[quadrant]])
    return w


def exact_riemann(left: tuple, right: tuple, gamma: float, xi: np.ndarray) -> np.ndarray:
    """Exact solution (ρ, u, p) [3, len(xi)] of the 1D Riemann problem at similarity coordinates
    xi = x/t; left/right = (ρ, u, p).  Toro (2009) ch. 4: Newton iteration for the star pressure."""
    (rl, ul, pl), (rr, ur, pr) = left, right
    cl, cr = math.sqrt(gamma * pl / rl), math.sqrt(gamma * pr / rr)
    g1, g2 = (gamma - 1) / (2 * gamma), (gamma + 1) / (2 * gamma)

    def f(p, rk, pk, ck):  # velocity change across the left/right wave, and its derivative
        if p > pk:  # shock
            a, b = 2 / ((gamma + 1) * rk), (gamma - 1) / (gamma + 1) * pk
            return (p - pk) * math.sqrt(a / (p + b)), math.sqrt(a / (p + b)) * (
                1 - (p - pk) / (2 * (b + p))
            )
        return 2 * ck / (gamma - 1) * ((p / pk) ** g1 - 1), (p / pk) ** (-g2) / (rk * ck)

    p = max(1e-8, 0.5 * (pl + pr))
    for _ in range(100):
        (fl, dfl), (fr, dfr) = f(p, rl, pl, cl), f(p, rr, pr, cr)
        p_new = max(1e-10, p - (fl + fr + ur - ul) / (dfl + dfr))
        if abs(p_new - p) < 1e-14 * p:
            break
        p = p_new
    u_star = 0.5 * (ul + ur) + 0.5 * (f(p, rr, pr, cr)[0] - f(p, rl, pl, cl)[0])
    out = np.empty((3, len(xi)))
    for i, s in enumerate(xi):
        side, sign = ((rl, ul, pl, cl), 1) if s <= u_star else ((rr, ur, pr, cr), -1)
        rk, uk, pk, ck = side
        if p > pk:  # shock on this side
            speed = uk - sign * ck * math.sqrt(g2 * p / pk + g1)
            ratio = (p / pk + (gamma - 1) / (gamma + 1)) / ((gamma - 1) / (gamma + 1) * p / pk + 1)
            beyond = sign * (s - speed) < 0
            out[:, i] = (rk, uk, pk) if beyond else (rk * ratio, u_star, p)
            continue
        c_star = ck * (p / pk) ** g1
        head, tail = uk - sign * ck, u_star - sign * c_star
        if sign * (s - head) < 0:
            out[:, i] = (rk, uk, pk)
        elif sign * (s - tail) > 0:
            out[:, i] = (rk * (p / pk) ** (1 / gamma), u_star, p)
        else:  # inside the fan
            c = 2 / (gamma + 1) * (ck + sign * (gamma - 1) / 2 * (uk - s))
            u = 2 / (gamma + 1) * (sign * ck + (gamma - 1) / 2 * uk + s)
            out[:, i] = (rk * (c / ck) ** (2 / (gamma - 1)), u, pk * (c / ck) ** (1 / g1))
    return out


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    gamma, jump = params["gamma"], params["pressure_jump"]
    if not gamma > 1:
        raise DataError(f"euler2d: parameter gamma={gamma:g} must be > 1 (an ideal gas)")
    require_positive(SPEC.name, params, "pressure_jump")
    if jump < 1:
        raise DataError(
            f"euler2d: parameter pressure_jump={jump:g} must be ≥ 1 (the largest/smallest pressure)"
        )
    q0 = conserved(random_quadrants(rng, n_traj, resolution, jump), gamma)
    q = integrate(q0, gamma, SPEC.dt, n_steps)  # [B, T, 4, n, n]
    pressure = primitives(q, gamma)[:, :, 3]
    fields = [
        Field("density", 0, q[:, :, 0]),
        Field("energy", 0, q[:, :, 3]),
        Field("pressure", 0, pressure),
        Field("momentum", 1, np.stack([q[:, :, 1], q[:, :, 2]], axis=-1)),
    ]
    time = SPEC.dt * np.arange(n_steps)
    return make_well_data(SPEC.name, ["x", "y"], LENGTH, resolution, time, fields, params)


SPEC = SystemSpec(
    name="euler2d",
    n_spatial_dims=2,
    default_params={"gamma": [1.4, 1.13], "pressure_jump": [2.0, 20.0]},
    resolution=48,
    n_steps=32,
    dt=0.015,
    description="Compressible Euler 2D Riemann problems (density, energy, pressure, momentum), HLLC-MUSCL",
    run=run,
    n_traj=8,
    field_names=("density", "energy", "pressure", "momentum_x", "momentum_y"),
    min_resolution=16,
    regimes=(
        "pressure_jump 2: weak shocks, nearly acoustic waves",
        "pressure_jump 20: strong shocks, jets along contact lines",
        "gamma 1.4 / 1.13: stiff / soft gas",
    ),
)
