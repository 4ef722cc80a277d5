"""Gray–Scott reaction–diffusion in 3D, on the periodic cube [0, 48)³.

Equations, coefficients and method are those of :mod:`.gray_scott2d` (its solver is dimension-
agnostic: the seven-point Laplacian replaces the five-point one, forward Euler, float32 state), so a
field that is constant along one axis evolves exactly as the 2D system does in each slice (checked
by the tests to round-off).  In 3D the spiral waves become scroll waves (spirals stacked along
filaments that twist and reconnect) and the gliders become moving spots.

Defaults: 32³ on a 48-unit cube (dx = 1.5, Δt = 1: the 3D diffusive limit is dx²/(6 Du) = 1.9).
A 32-unit cube at dx = 1 is too small: with 3 pattern wavelengths per side every default regime
dies out within 600 time units; 48 units keeps all four alive.  dx = 1.5 is coarser than the 2D
default (1) but finer than the 2 at which the 2D pattern dies.  Six random 6-unit cubes seed the
pattern; the first 400 time units are discarded (persistence is then steady), and frames are 20
time units apart: next-frame persistence VRMSE ≈ 0.23–0.36 over the four default (F, k) pairs, as
high over the last 8 of 32 frames as over the first 12.  32 frames per trajectory keep the default
dataset within a minute on one core (a 3D step costs 8× a 2D one per point of side).
"""

from __future__ import annotations

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.simulators.common import SystemSpec
from data_pipelines.simulators.gray_scott2d import simulate
from data_pipelines.well_format import WellData

LENGTH = 48.0
FRAME_TIME = 20.0
SPIN_UP_TIME = 400.0
MIN_RESOLUTION = 32  # dx = 1.5; the 2D pattern dies at dx = 2


def check_params(params: dict[str, float]) -> None:
    for name in ("F", "k"):
        if not 0 <= params[name] <= 0.2:
            raise DataError(
                f"gray_scott3d: parameter {name}={params[name]:g} must lie in [0, 0.2] "
                "(Pearson's (F, k) diagram; every pattern-forming regime lies well inside it)"
            )


def run(
    n_traj: int, n_steps: int, resolution: int, params: dict[str, float], rng: np.random.Generator
) -> WellData:
    check_params(params)
    return simulate(SPEC, LENGTH, SPIN_UP_TIME, n_traj, n_steps, resolution, params, rng)


SPEC = SystemSpec(
    name="gray_scott3d",
    n_spatial_dims=3,
    default_params={"F": [0.018, 0.014], "k": [0.051, 0.054]},
    resolution=32,
    n_steps=32,
    dt=FRAME_TIME,
    description="3D Gray-Scott reaction-diffusion (A=u, B=v), explicit finite differences; (F, k): scrolls, spots",
    run=run,
    field_names=("A", "B"),
    min_resolution=MIN_RESOLUTION,
    regimes=("scroll waves", "moving spots"),
)
