"""Built-in simulators: each solver against known physics, determinism, The Well layout, moving
data."""

import math

import numpy as np
import pytest

from data_pipelines.errors import DataError
from data_pipelines.simulators import (
    SIMULATORS,
    burgers1d,
    gray_scott2d,
    navier_stokes2d,
    parameter_grid,
    parse_sweep,
    persistence_vrmse,
    simulate_dataset,
    simulate_trajectories,
    split_counts,
    wave2d,
)
from data_pipelines.simulators.common import periodic_grid

# ------------------------------------------------------------------------------------ Navier–Stokes


def test_navier_stokes_taylor_green_decay():
    # ω = −2k cos kx cos ky has u·∇ω = 0, so it decays as exp(−(2νk² + α) t) exactly
    grid = navier_stokes2d.SpectralGrid(32)
    x = periodic_grid(32, navier_stokes2d.LENGTH)
    k, nu, drag = 2, 0.05, 0.1
    w0 = (-2 * k * np.cos(k * x)[:, None] * np.cos(k * x)[None, :])[None]
    w = navier_stokes2d.integrate(w0, grid, nu, drag, None, frame_dt=0.25, n_frames=4)
    for t in range(4):
        expected = w0[0] * math.exp(-(2 * nu * k**2 + drag) * 0.25 * (t + 1))
        np.testing.assert_allclose(w[0, t], expected, atol=1e-10 * np.abs(w0).max())


def test_navier_stokes_advection_term_matches_analytic():
    # ω = sin x + cos 2y → ψ = sin x + cos(2y)/4, u = ψ_y = −sin(2y)/2, v = −ψ_x = −cos x,
    # u·∇ω = −sin(2y) cos(x)/2 + 2 cos(x) sin(2y) = 1.5 cos x sin 2y
    grid = navier_stokes2d.SpectralGrid(32)
    x = periodic_grid(32, navier_stokes2d.LENGTH)
    X, Y = np.meshgrid(x, x, indexing="ij")
    adv = grid.ifft(grid.advection_hat(grid.fft(np.sin(X) + np.cos(2 * Y))))
    np.testing.assert_allclose(adv, 1.5 * np.cos(X) * np.sin(2 * Y), atol=1e-12)
    u_hat, v_hat = grid.velocity_hat(grid.fft(np.sin(X) + np.cos(2 * Y)))
    np.testing.assert_allclose(grid.ifft(u_hat), -np.sin(2 * Y) / 2, atol=1e-12)
    np.testing.assert_allclose(grid.ifft(v_hat), -np.cos(X), atol=1e-12)


def test_navier_stokes_inviscid_invariants():
    # without viscosity, drag and forcing the dealiased (Galerkin) system conserves energy and
    # enstrophy
    grid = navier_stokes2d.SpectralGrid(32)
    w0 = navier_stokes2d.random_vorticity(np.random.default_rng(1), 2, grid)
    # ~1 turnover
    w = navier_stokes2d.integrate(w0, grid, 0.0, 0.0, None, frame_dt=0.5, n_frames=4, cfl=0.25)

    def energy_enstrophy(w):
        u_hat, v_hat = grid.velocity_hat(grid.fft(w))
        return (grid.ifft(u_hat) ** 2 + grid.ifft(v_hat) ** 2).mean(axis=(-2, -1)), (w**2).mean(
            axis=(-2, -1)
        )

    e0, z0 = energy_enstrophy(grid.ifft(grid.fft(w0) * grid.dealias))
    e1, z1 = energy_enstrophy(w[:, -1])
    assert not np.allclose(w[:, -1], w0, atol=0.1)  # the flow did evolve
    # RK4's own dissipation at this CFL is ~1e-7; a wrong sign or missing dealiasing breaks both by
    # far more
    np.testing.assert_allclose(e1, e0, rtol=1e-6)
    np.testing.assert_allclose(z1, z0, rtol=1e-6)


# ------------------------------------------------------------------------------------------ Burgers


def test_burgers_second_order_against_cole_hopf():
    nu, errors = 0.2, []
    for n in (32, 64, 128, 256):
        x = periodic_grid(n, burgers1d.LENGTH)
        u0 = burgers1d.cole_hopf_solution(x, 0.0, nu, a=1.2)[None]
        u = burgers1d.integrate(u0, nu, frame_dt=0.5, n_frames=2)[0, -1]
        errors.append(np.abs(u - burgers1d.cole_hopf_solution(x, 1.0, nu, a=1.2)).mean())
    orders = np.log2(np.array(errors[:-1]) / errors[1:])
    assert errors[-1] < 5e-5 and (orders > 1.75).all() and orders[-1] > 1.9, (errors, orders)


def test_burgers_forced_conserves_mass_and_keeps_moving():
    rng = np.random.default_rng(0)
    x = periodic_grid(128, burgers1d.LENGTH)
    forcing = burgers1d.Forcing(rng, 3, x)
    u0 = forcing(0.0)
    u = burgers1d.integrate(u0, 0.01, frame_dt=0.5, n_frames=20, forcing=forcing)
    # finite volumes + zero-mean forcing + Fourier diffusion: ∫u dx is conserved to round-off
    np.testing.assert_allclose(u.mean(-1), u0.mean(-1)[:, None].repeat(20, 1), atol=1e-12)
    assert np.isfinite(u).all() and np.abs(u).max() < 5  # bounded
    assert (u.std(-1) > 0.2).all()  # forcing keeps it from decaying


def test_burgers_shock_is_not_oscillatory():
    # a step down (u=1 | u=0) steepens into a shock; the limiter and positive diffusion kernel keep
    # the solution within its initial bounds (no Gibbs overshoot)
    x = periodic_grid(128, burgers1d.LENGTH)
    u0 = np.where((x > 1) & (x < 3), 1.0, 0.0)[None]
    u = burgers1d.integrate(u0, 1e-3, frame_dt=0.5, n_frames=2)
    assert u.min() >= -1e-12 and u.max() <= 1 + 1e-12


# -------------------------------------------------------------------------------------- Gray–Scott


def test_gray_scott_fourier_mode_diffuses_at_the_discrete_rate():
    n, m, steps, dt = 32, 2, 200, 0.5
    x = np.arange(n)
    eps = 1e-3
    u0 = (1 + eps * np.cos(2 * np.pi * m * x / n))[None, :, None].repeat(n, axis=2)
    v0 = np.zeros_like(u0)
    u, _ = gray_scott2d.integrate(u0, v0, 0.0, 0.0, n_frames=1, steps_per_frame=steps, dt=dt)
    expected = eps * np.cos(2 * np.pi * m * x / n)[:, None].repeat(n, axis=1)
    # forward Euler on the 5-point Laplacian: amplitude × (1 − 4 D dt sin²(πm/n)) per step, exactly
    factor = (1 - 4 * gray_scott2d.DIFFUSION_U * dt * math.sin(math.pi * m / n) ** 2) ** steps
    np.testing.assert_allclose(u[0, 0] - 1, factor * expected, atol=1e-14)
    # ... whose rate is the continuum one, D k², to within the scheme's O((k dx)²) error
    k = 2 * np.pi * m / n
    assert abs(-math.log(factor) / (gray_scott2d.DIFFUSION_U * k**2 * steps * dt) - 1) < 0.02


def test_gray_scott_uniform_state_follows_reaction_kinetics():
    from scipy.integrate import solve_ivp

    feed, kill, t_end, dt = 0.018, 0.051, 50.0, 0.01
    u0, v0 = 0.6, 0.3

    def kinetics(_, y):
        u, v = y
        return [-u * v * v + feed * (1 - u), u * v * v - (feed + kill) * v]

    ref = solve_ivp(kinetics, (0, t_end), [u0, v0], rtol=1e-10, atol=1e-12).y[:, -1]
    u, v = gray_scott2d.integrate(
        np.full((1, 8, 8), u0),
        np.full((1, 8, 8), v0),
        feed,
        kill,
        n_frames=1,
        steps_per_frame=int(t_end / dt),
        dt=dt,
    )
    np.testing.assert_allclose([u[0, 0].mean(), v[0, 0].mean()], ref, rtol=2e-3)
    assert np.ptp(u) < 1e-12  # stays uniform: diffusion of a constant is zero


def test_gray_scott_without_feed_and_kill_conserves_total_mass():
    # F = k = 0: u + v → 2v via u v² only, diffusion conserves each sum, so ∫(u + v) is invariant
    u0, v0 = gray_scott2d.random_patches(np.random.default_rng(0), 2, 32)
    u, v = gray_scott2d.integrate(u0, v0, 0.0, 0.0, n_frames=3, steps_per_frame=100, dx=2.0)
    total0 = (u0 + v0).sum(axis=(-2, -1))
    np.testing.assert_allclose((u + v).sum(axis=(-2, -1)), total0[:, None].repeat(3, 1), rtol=1e-12)
    assert (v[:, -1].sum(axis=(-2, -1)) > v0.sum(axis=(-2, -1))).all()  # the autocatalysis ran


# --------------------------------------------------------------------------------------------- wave


def test_wave_travelling_plane_wave_matches_analytic():
    n, c = 32, 0.7
    x = periodic_grid(n, wave2d.LENGTH)
    X, Y = np.meshgrid(x, x, indexing="ij")
    k = 2 * np.pi * np.array([3.0, -2.0])  # wave vector on the unit square
    k_abs, times = np.linalg.norm(k), np.array([0.0, 0.13, 0.5, 2.0])
    phase = lambda t: k[0] * X + k[1] * Y - c * k_abs * t
    p0 = np.cos(phase(0))[None]
    v0 = (np.stack([k[0], k[1]]) / k_abs / c * np.cos(phase(0))[..., None])[None]
    p, v = wave2d.propagate(p0, v0, c, times)
    for i, t in enumerate(times):
        np.testing.assert_allclose(p[0, i], np.cos(phase(t)), atol=1e-12)
        np.testing.assert_allclose(v[0, i], k / k_abs / c * np.cos(phase(t))[..., None], atol=1e-12)


def test_wave_conserves_energy_and_satisfies_the_wave_equation():
    c = 1.3
    p0 = wave2d.random_pulses(np.random.default_rng(2), 2, 64)
    times = np.array([0.0, 0.1, 0.3, 1.0, 5.0])
    p, v = wave2d.propagate(p0, np.zeros((*p0.shape, 2)), c, times)
    energy = wave2d.acoustic_energy(p, v, c)
    np.testing.assert_allclose(energy, energy[:, :1].repeat(len(times), 1), rtol=1e-10)
    # p_tt = c² Δp, checked by finite differences in time on the spectral solution
    h = 2e-4
    p3, _ = wave2d.propagate(p0, np.zeros((*p0.shape, 2)), c, np.array([0.3 - h, 0.3, 0.3 + h]))
    p_tt = (p3[:, 0] - 2 * p3[:, 1] + p3[:, 2]) / h**2
    grid = navier_stokes2d.SpectralGrid(64, length=wave2d.LENGTH)
    laplacian = grid.ifft(-grid.k2 * grid.fft(p3[:, 1]))
    np.testing.assert_allclose(p_tt, c**2 * laplacian, atol=1e-4 * np.abs(p_tt).max())


# ------------------------------------------------------------------------ registry and determinism


# rayleigh_benard2d spins up for hundreds of steps even at 3 frames: slow
@pytest.mark.parametrize(
    "system",
    [
        pytest.param(s, marks=pytest.mark.slow) if s == "rayleigh_benard2d" else s
        for s in sorted(SIMULATORS)
    ],
)
def test_each_system_is_deterministic_for_a_seed(system):
    spec = SIMULATORS[system]
    params = {k: v[0] for k, v in spec.default_params.items()}
    n = max(16, spec.min_resolution)
    a = simulate_trajectories(spec, 2, 3, n, params, seed=5)
    b = simulate_trajectories(spec, 2, 3, n, params, seed=5)
    c = simulate_trajectories(spec, 2, 3, n, params, seed=6)
    assert a.channel_names == list(spec.field_names) and a.n_trajectories == 2 and a.n_steps == 3
    assert a.spatial_shape == (n,) * spec.n_spatial_dims and a.simulation_parameters == params
    np.testing.assert_array_equal(a.frames(1), b.frames(1))
    assert not np.allclose(a.frames(1), c.frames(1))
    assert not np.allclose(a.frames(0), a.frames(1))  # trajectories start from different conditions
    assert all(np.isfinite(f.data).all() and f.data.dtype == np.float32 for f in a.fields)


def test_parameter_grid_sweeps_and_errors():
    spec = SIMULATORS["gray_scott2d"]
    grid = parameter_grid(spec, {"k": [0.05, 0.06]})
    assert grid == [{"F": f, "k": k} for f in spec.default_params["F"] for k in (0.05, 0.06)]
    values = parse_sweep("log:1e-3:1e-2:16")
    assert (
        len(values) == 16 and values[0] == pytest.approx(1e-3) and values[-1] == pytest.approx(1e-2)
    )
    assert np.allclose(np.diff(np.log(values)), np.log(10) / 15)
    assert parse_sweep("lin:0:1:3") == [0.0, 0.5, 1.0]
    with pytest.raises(DataError, match="unknown parameter.*viscosity"):
        parameter_grid(spec, {"viscosity": [1.0]})
    with pytest.raises(DataError, match="log:LO:HI:N"):
        parse_sweep("geom:1:2:3")
    with pytest.raises(DataError, match="LO and HI > 0"):
        parse_sweep("log:0:1:4")
    assert split_counts(10, (0.8, 0.1, 0.1)) == {"train": 8, "valid": 1, "test": 1}
    assert split_counts(3, (0.8, 0.1, 0.1)) == {"train": 1, "valid": 1, "test": 1}
    with pytest.raises(DataError, match="at least 3"):
        split_counts(2, (0.8, 0.1, 0.1))


def test_simulate_dataset_writes_the_well_layout(tmp_path):
    from data_pipelines.stats import read_stats
    from data_pipelines.well_io import read_well

    lines = []
    out = simulate_dataset(
        "wave2d",
        tmp_path / "wave",
        n_traj=5,
        n_steps=11,
        resolution=16,
        params={"c": parse_sweep("lin:0.5:1.5:3")},
        seed=1,
        log=lines.append,
    )
    assert out == tmp_path / "wave" and len(lines) == 9 and "persistence VRMSE" in lines[0]
    counts = {"train": 3, "valid": 1, "test": 1}
    for split, n in counts.items():
        files = sorted((out / "data" / split).glob("*.hdf5"))
        assert [f.name for f in files] == [
            "wave2d_c_0.5.hdf5",
            "wave2d_c_1.5.hdf5",
            "wave2d_c_1.hdf5",
        ]
        for f in files:
            data = read_well(f)
            assert (
                data.n_trajectories == n and data.n_steps == 11 and data.spatial_shape == (16, 16)
            )
            assert data.channel_names == ["pressure", "velocity_x", "velocity_y"]
            assert data.simulation_parameters == {"c": float(f.stem.split("_")[-1])}
            assert {s.name for s in data.scalars} == {"c"}
            assert {bc.name: bc.bc_type for bc in data.boundary_conditions} == {
                "x_periodic": "PERIODIC",
                "y_periodic": "PERIODIC",
            }
    # trajectory i starts from the same pulses at every c: with v0 = 0 the pressure depends on c·t
    # only, so frame 0 at c = 1 (c·t = 0.2) is frame 10 at c = 0.5 (c·t = 0.5 · (0.2 + 10 · 0.02))
    slow = read_well(out / "data" / "train" / "wave2d_c_0.5.hdf5").frames
    fast = read_well(out / "data" / "train" / "wave2d_c_1.hdf5").frames
    for i in range(3):
        np.testing.assert_allclose(slow(i)[10, 0], fast(i)[0, 0], atol=1e-5)
    # ... while the splits never share an initial condition
    test = read_well(out / "data" / "test" / "wave2d_c_1.hdf5")
    assert not any(np.allclose(test.frames(0)[0], fast(i)[0], atol=1e-3) for i in range(3))
    stats = read_stats(out)
    assert set(stats["mean"]) == {"pressure", "velocity"} and len(stats["std"]["velocity"]) == 2
    # a rerun into the same folder with other parameters refuses to mix files ...
    with pytest.raises(DataError, match="overwrite"):
        simulate_dataset("wave2d", out, n_traj=3, n_steps=4, resolution=16, params={"c": [2.0]})
    # ... unless asked, and then leaves only its own files
    simulate_dataset(
        "wave2d", out, n_traj=3, n_steps=4, resolution=16, params={"c": [2.0]}, overwrite=True
    )
    assert sorted(p.name for p in (out / "data").rglob("*.hdf5")) == ["wave2d_c_2.hdf5"] * 3


def test_simulate_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="unknown system 'lorenz'.*burgers1d"):
        simulate_dataset("lorenz", tmp_path)
    with pytest.raises(DataError, match="unknown parameter.*Re.*known: nu"):
        simulate_dataset("burgers1d", tmp_path, params={"Re": [100.0]})
    with pytest.raises(DataError, match="n_traj=2"):
        simulate_dataset("burgers1d", tmp_path, n_traj=2)


def test_cli_simulate(tmp_path, capsys):
    from physfm.cli import main

    assert main(["simulate", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in SIMULATORS) and "nu=0.01,0.1" in listing
    out = tmp_path / "burgers"
    argv = [
        "simulate",
        "burgers1d",
        "--out",
        str(out),
        "--n-traj",
        "3",
        "--n-steps",
        "4",
        "--resolution",
        "32",
        "--param-sweep",
        "nu=log:0.01:0.1:2",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6 and all("persistence VRMSE" in line for line in printed)
    assert (out / "stats.yaml").is_file() and len(list((out / "data").rglob("*.hdf5"))) == 6
    assert main(["simulate", "burgers1d", "--out", str(out), "--param", "Re=3"]) == 2
    assert "unknown parameter(s) Re" in capsys.readouterr().err
    assert main(["simulate", "burgers1d", "--out", str(out), "--param", "nu=fast"]) == 2
    assert "numbers separated by commas" in capsys.readouterr().err


# ------------------------------------------------------------------- default datasets keep moving


@pytest.mark.parametrize("system", sorted(SIMULATORS))
@pytest.mark.slow
def test_default_regimes_keep_moving(system):
    """Every default regime, at the default grid and frame interval (fewer frames/trajectories): the
    next-frame persistence VRMSE, averaged over fields, sits in a learnable band, no field freezes,
    and no field becomes spatially constant."""
    spec = SIMULATORS[system]
    for params in parameter_grid(spec, None):
        data = simulate_trajectories(spec, 2, 12, spec.resolution, params, seed=0)
        for i in range(data.n_trajectories):
            frames = data.frames(i)  # [T, C, *space]
            vrmse = persistence_vrmse(frames)  # [C]
            assert 0.1 < vrmse.mean() < 0.8 and (vrmse > 0.05).all(), (system, params, i, vrmse)
            space = tuple(range(2, frames.ndim))
            assert (frames.std(axis=space) > 1e-3 * np.abs(frames).max(axis=space)).all(), (
                system,
                params,
                i,
            )
