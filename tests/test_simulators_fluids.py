"""The fluid simulators (shear flow, Rayleigh–Bénard, shallow water, Euler, 3D Navier–Stokes) against
known physics: conservation laws, exact solutions, dispersion relations, the onset of convection."""

import math

import numpy as np

from data_pipelines.simulators import (
    shear_flow2d,
)
from data_pipelines.simulators.common import periodic_grid
from data_pipelines.simulators.navier_stokes2d import SpectralGrid

# ------------------------------------------------------------------------------------- shear flow


def test_shear_flow_inviscid_run_conserves_tracer_energy_and_enstrophy():
    grid = SpectralGrid(32, length=1.0)
    u, v, s = shear_flow2d.shear_layers(np.random.default_rng(0), 2, 32)
    w0 = shear_flow2d.vorticity_from_velocity(grid, u, v)
    w0, s0 = grid.ifft(grid.fft(w0) * grid.dealias), grid.ifft(grid.fft(s) * grid.dealias)
    w, s1 = shear_flow2d.integrate(w0, s0, grid, 0.0, 0.0, frame_dt=0.1, n_frames=3, cfl=0.25)

    def energy(w):
        w_hat = grid.fft(w)
        return (grid.ifft(grid.to_u * w_hat) ** 2 + grid.ifft(grid.to_v * w_hat) ** 2).mean(axis=(-2, -1))

    assert not np.allclose(s1[:, -1], s0, atol=0.05)  # the layers did move
    np.testing.assert_allclose(s1[:, -1].mean(axis=(-2, -1)), s0.mean(axis=(-2, -1)), atol=1e-13)
    np.testing.assert_allclose((s1[:, -1] ** 2).mean(axis=(-2, -1)), (s0**2).mean(axis=(-2, -1)), rtol=1e-6)
    np.testing.assert_allclose(energy(w[:, -1]), energy(w0), rtol=1e-6)
    np.testing.assert_allclose((w[:, -1] ** 2).mean(axis=(-2, -1)), (w0**2).mean(axis=(-2, -1)), rtol=1e-6)


def test_shear_flow_parallel_shear_and_tracer_decay_exactly():
    # u = sin(2π k y) is an exact solution decaying as exp(−ν (2πk)² t); a tracer s(y) is not advected
    grid, nu, diffusivity = SpectralGrid(32, length=1.0), 0.01, 0.003
    y = periodic_grid(32, 1.0)[None, :]
    k = 2 * math.pi * 2
    u = np.broadcast_to(np.sin(k * y), (32, 32))[None]
    s0 = np.broadcast_to(np.cos(k * y), (32, 32))[None]
    w0 = shear_flow2d.vorticity_from_velocity(grid, u, np.zeros_like(u))
    w, s = shear_flow2d.integrate(w0, s0, grid, nu, diffusivity, frame_dt=0.5, n_frames=2)
    np.testing.assert_allclose(w[0, -1], w0[0] * math.exp(-nu * k**2), atol=1e-12)
    np.testing.assert_allclose(s[0, -1], s0[0] * math.exp(-diffusivity * k**2), atol=1e-12)


def test_shear_flow_pressure_of_taylor_green_cells():
    # u = sin 2πx cos 2πy, v = −cos 2πx sin 2πy  →  p = (cos 4πx + cos 4πy)/4
    grid = SpectralGrid(32, length=1.0)
    x = periodic_grid(32, 1.0)
    X, Y = np.meshgrid(x, x, indexing="ij")
    u, v = np.sin(2 * np.pi * X) * np.cos(2 * np.pi * Y), -np.cos(2 * np.pi * X) * np.sin(2 * np.pi * Y)
    p = grid.ifft(shear_flow2d.pressure_hat(grid, u, v))
    np.testing.assert_allclose(p, (np.cos(4 * np.pi * X) + np.cos(4 * np.pi * Y)) / 4, atol=1e-12)
