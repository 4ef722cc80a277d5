"""Pattern-forming and transport systems (Cahn–Hilliard, Swift–Hohenberg, advection–diffusion, KdV,
Gray–Scott 3D): each solver against its physics — invariants, Lyapunov functionals, exact solutions,
linear rates — plus NaN-free runs at the corners of its default sweep and one clear error per bad
parameter."""

import math

import numpy as np
import pytest

from data_pipelines.errors import DataError
from data_pipelines.simulators import SIMULATORS, cahn_hilliard2d, kdv1d, simulate_trajectories
from data_pipelines.simulators.common import periodic_grid

# ------------------------------------------------------------------------------------- Cahn–Hilliard


def test_cahn_hilliard_conserves_mass_and_free_energy_never_rises():
    epsilon = 1.5
    solver = cahn_hilliard2d.CahnHilliard(32, mobility=1.0, epsilon=epsilon)
    c0 = 0.2 + 0.05 * np.random.default_rng(0).uniform(-1, 1, (2, 32, 32))
    step = cahn_hilliard2d.STEP_IN_EPS2_OVER_M * epsilon**2
    c = solver.integrate(c0, frame_dt=step, n_frames=300)  # one frame per step: every step is checked
    energy = np.concatenate([solver.free_energy(c0)[:, None], solver.free_energy(c)], axis=1)
    assert (energy[:, -1] < 0.7 * energy[:, 0]).all()  # it did phase-separate (measured 0.56)
    # Shen–Yang stabilisation: unconditionally energy stable (measured: every step lowers F by ≥ 0.024)
    assert (np.diff(energy, axis=1) <= 0).all()
    # the k = 0 mode is never updated (measured drift 2e-17)
    np.testing.assert_allclose(c.mean(axis=(-2, -1)), c0.mean(axis=(-2, -1))[:, None].repeat(300, 1), atol=1e-14)


def test_cahn_hilliard_planar_interface_is_an_equilibrium():
    # c = tanh(x / (√2 ε)) solves μ = c³ − c − ε² c'' = 0: two interfaces 32 units apart (interaction
    # ~ e^{-30}) must stay put, converging spectrally to the exact profile as the grid refines
    epsilon, deviations = 1.5, []
    for n in (32, 64):
        x = periodic_grid(n, cahn_hilliard2d.LENGTH)
        profile = np.tanh((x - 16) / (math.sqrt(2) * epsilon)) * np.tanh((48 - x) / (math.sqrt(2) * epsilon))
        c0 = np.broadcast_to(profile[:, None], (n, n))[None].copy()
        c = cahn_hilliard2d.CahnHilliard(n, 1.0, epsilon).integrate(c0, frame_dt=50.0, n_frames=4)
        deviations.append(np.abs(c[0, -1] - c0[0]).max())
    # measured: 8.2e-3 at dx = 2, 1.8e-5 at the dataset's dx = 1
    assert deviations[1] < 5e-5 and deviations[0] / deviations[1] > 100, deviations


def test_cahn_hilliard_rejects_bad_parameters():
    rng, spec = np.random.default_rng(0), SIMULATORS["cahn_hilliard2d"]
    good = {"mobility": 1.0, "epsilon": 1.0, "mean_concentration": 0.0}
    for name, value, message in [
        ("mobility", 0.0, "parameter mobility=0 must be > 0"),
        ("epsilon", -1.0, "parameter epsilon=-1 must be > 0"),
        ("mean_concentration", 1.0, r"parameter mean_concentration=1 must lie in \(-1, 1\)"),
        ("epsilon", 0.4, "parameter epsilon=0.4 is under half a cell"),
    ]:
        with pytest.raises(DataError, match=message):
            spec.run(1, 2, 64, {**good, name: value}, rng)


# ----------------------------------------------------------------------------------------------- KdV


def test_kdv_soliton_keeps_its_speed_and_shape_to_fourth_order():
    # u = a sech²(√(a/2) (x − 2a t)/δ) is exact; tails at half a box are ~1e-9, below the errors
    amplitude, dispersion, n, t_end = 1.0, 0.2, 256, 1.0
    x = periodic_grid(n, kdv1d.LENGTH)
    u0 = kdv1d.soliton(x, 0.0, amplitude, dispersion, x0=2.0)[None]
    exact = kdv1d.soliton(x, t_end, amplitude, dispersion, x0=2.0)  # travelled 2 units, a third of the box
    errors = []
    for cfl in (kdv1d.CFL, kdv1d.CFL / 2):
        u = kdv1d.integrate(u0, dispersion, frame_dt=t_end / 4, n_frames=4, cfl=cfl)[0, -1]
        errors.append(np.abs(u - exact).max())
    # measured: 7.4e-8 at the dataset's CFL of 0.5, 4.1e-9 at 0.25 — ETDRK4's fourth order (ratio 18)
    assert errors[0] < 2e-7 * amplitude and math.log2(errors[0] / errors[1]) > 3.5, errors
    # speed from the phase of the first Fourier mode of the translated profile: c = 2a
    phase = np.angle(np.fft.rfft(u)[1] / np.fft.rfft(u0[0])[1])
    assert abs(-phase / t_end - 2 * amplitude) < 1e-7


def test_kdv_conserves_mass_momentum_and_energy():
    dispersion = 0.12
    solver = kdv1d.KdVSolver(256, dispersion)
    u0 = kdv1d.random_initial_condition(np.random.default_rng(0), 3, 256, 1.0)
    u0 = np.fft.irfft(np.fft.rfft(u0) * solver.dealias, 256)  # the scheme works on the dealiased band
    u = kdv1d.integrate(u0, dispersion, frame_dt=0.1, n_frames=5)  # solitons form and overtake

    def invariants(v):
        ux = np.fft.irfft(1j * solver.k * np.fft.rfft(v), 256)
        return v.mean(-1), (v**2 / 2).mean(-1), (v**3 - dispersion**2 / 2 * ux**2).mean(-1)

    mass0, momentum0, energy0 = invariants(u0)
    mass, momentum, energy = invariants(u[:, -1])
    assert np.abs(u[:, -1] - u0).max() > 0.5  # it did evolve (steepened into solitons)
    np.testing.assert_allclose(mass, mass0, atol=1e-14)  # the k = 0 mode is never touched
    # the dealiased Galerkin system conserves both exactly; what is left is ETDRK4's time error,
    # measured at the dataset's CFL of 0.5: 1.5e-6 (momentum) and 5.3e-6 (energy) relative
    np.testing.assert_allclose(momentum, momentum0, rtol=3e-6)
    np.testing.assert_allclose(energy, energy0, rtol=1e-5)


def test_kdv_rejects_bad_parameters():
    rng = np.random.default_rng(0)
    spec = SIMULATORS["kdv1d"]
    with pytest.raises(DataError, match="parameter amplitude=-1 must be > 0"):
        spec.run(1, 2, 256, {"amplitude": -1.0, "dispersion": 0.1}, rng)
    with pytest.raises(DataError, match="parameter dispersion=0 must be > 0"):
        spec.run(1, 2, 256, {"amplitude": 1.0, "dispersion": 0.0}, rng)
    with pytest.raises(DataError, match=r"parameter dispersion=0.02 too small .*raise --resolution"):
        spec.run(1, 2, 256, {"amplitude": 1.0, "dispersion": 0.02}, rng)


# ------------------------------------------------------------------------------ sweep corners stay finite

CORNER_SIZES = {
    "kdv1d": 256,
    "cahn_hilliard2d": 32,
}  # resolution for the corner runs (fewer frames than a dataset, default dt)


def sweep_corners(system: str) -> list[dict[str, float]]:
    """Every combination of the lowest and highest default value of each parameter."""
    values = {k: sorted({min(v), max(v)}) for k, v in SIMULATORS[system].default_params.items()}
    return [dict(zip(values, combo)) for combo in np.array(np.meshgrid(*values.values())).reshape(len(values), -1).T]


@pytest.mark.parametrize("system", sorted(CORNER_SIZES))
def test_sweep_corners_are_finite_and_moving(system):
    spec = SIMULATORS[system]
    for params in sweep_corners(system):
        data = simulate_trajectories(spec, 1, 4, CORNER_SIZES[system], params, seed=3)
        frames = data.frames(0)
        assert np.isfinite(frames).all(), (system, params)
        assert not np.allclose(frames[0], frames[-1]), (system, params)
