"""Physical statistics of generated fields, the quantities a steered concept should move.

All functions take frames with the spatial axes last (``[..., n, n]`` for 2D, ``[..., n]`` for 1D)
on a periodic box, and work in grid units unless a box ``length`` is given (wavenumbers in units of
2π/L, so a mode ``sin(m x)`` on [0, 2π) sits at k = m). What each dataset's statistic is, and why:

* ``navier_stokes2d`` — enstrophy ½⟨ω²⟩: lower viscosity leaves more small-scale vorticity (with the
  linear drag holding the energy, the enstrophy grows as ν falls); the energy-spectrum slope is
  reported beside it;
* ``gray_scott2d`` — pattern wavelength L / k̄, with k̄ the power-weighted mean wavenumber of the
  (mean-removed) v field: spots and stripes of the (F, k) regimes differ in spacing;
* anything else — the spectral centroid wavelength of the first channel (a generic "how fine"
  measure).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def radial_spectrum(field: np.ndarray, n_dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Shell-summed power of a periodic field [..., *space] → (k = 1..k_max, E(k) [..., k_max]).

    Normalised so that Σ_k E(k) + E(0) = ⟨f²⟩ (Parseval); shells are |k| ∈ [k - ½, k + ½) in integer
    wavenumbers; the k = 0 (mean) shell is dropped."""
    field = np.asarray(field, dtype=np.float64)
    space = field.shape[-n_dims:]
    axes = tuple(range(-n_dims, 0))
    power = np.abs(np.fft.fftn(field, axes=axes)) ** 2 / math.prod(space) ** 2
    grids = np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in space], indexing="ij")
    shell = np.rint(np.sqrt(sum(g**2 for g in grids))).astype(int).reshape(-1)
    k_max = min(space) // 2
    flat = power.reshape(*power.shape[:-n_dims], -1)
    spectrum = np.stack([flat[..., shell == k].sum(-1) for k in range(1, k_max + 1)], axis=-1)
    return np.arange(1, k_max + 1, dtype=np.float64), spectrum


def enstrophy(vorticity: np.ndarray, n_dims: int = 2) -> np.ndarray:
    """½⟨ω²⟩ over space: [..., *space] → [...]."""
    w = np.asarray(vorticity, dtype=np.float64)
    return 0.5 * (w**2).mean(axis=tuple(range(-n_dims, 0)))


def kinetic_energy_spectrum(velocity: np.ndarray, n_dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """E(k) = ½ Σ_i |û_i|² per shell of a velocity [..., n_dims, *space] → (k, E [..., k_max])."""
    k, e = radial_spectrum(velocity, n_dims)
    return k, 0.5 * e.sum(axis=-2)


def spectral_slope(
    k: np.ndarray, spectrum: np.ndarray, k_min: float = 2.0, k_max: float | None = None
) -> np.ndarray:
    """Least-squares slope of log E vs log k over k_min ≤ k ≤ k_max (default: the upper third is
    left out, where the 2/3 dealiasing and the tokenizer's resolution cut the spectrum): [..., K] →
    [...]."""
    k_max = k_max if k_max is not None else 2 * k[-1] / 3
    keep = (k >= k_min) & (k <= k_max)
    if keep.sum() < 2:
        raise ValueError(f"spectral_slope: fewer than 2 wavenumbers in [{k_min}, {k_max}]")
    x = np.log(k[keep])
    y = np.log(np.maximum(spectrum[..., keep], 1e-300))
    x_c = x - x.mean()
    return ((y - y.mean(-1, keepdims=True)) * x_c).sum(-1) / (x_c**2).sum()


def dominant_wavelength(
    field: np.ndarray, n_dims: int = 2, length: float | None = None
) -> np.ndarray:
    """L / k̄ with k̄ = Σ k E(k) / Σ E(k) of the mean-removed field: [..., *space] → [...].

    In grid cells when ``length`` is None (L = the grid size). A centroid rather than the argmax
    peak so the statistic moves continuously as a pattern coarsens."""
    k, e = radial_spectrum(field, n_dims)
    k_mean = (e * k).sum(-1) / np.maximum(e.sum(-1), 1e-300)
    size = np.asarray(field).shape[-1] if length is None else length
    return size / np.maximum(k_mean, 1e-12)


# ------------------------------------------------------------------------------------------- per
# dataset fn(frames [..., C, *space], channel_names, n_dims) -> {statistic: values [...]}; the first
# key is the headline.
StatFn = Callable[[np.ndarray, list[str], int], dict[str, np.ndarray]]


class MissingChannel(ValueError):
    """The frames lack a channel a dataset's statistic reads (e.g. a custom dataset under a built-in
    name)."""


def _channel(frames: np.ndarray, channel_names: list[str], name: str) -> np.ndarray:
    if name not in channel_names:
        raise MissingChannel(
            f"physics statistic needs channel {name!r}; the frames have {channel_names}"
        )
    return frames[..., channel_names.index(name), :, :]


def navier_stokes_stats(
    frames: np.ndarray, channel_names: list[str], n_dims: int = 2
) -> dict[str, np.ndarray]:
    w = _channel(frames, channel_names, "vorticity")
    vel_idx = [channel_names.index(c) for c in ("velocity_x", "velocity_y") if c in channel_names]
    out = {"enstrophy": enstrophy(w)}
    if len(vel_idx) == 2:
        k, e = kinetic_energy_spectrum(np.stack([frames[..., i, :, :] for i in vel_idx], axis=-3))
        out["energy_spectrum_slope"] = spectral_slope(k, e)
    return out


def gray_scott_stats(
    frames: np.ndarray, channel_names: list[str], n_dims: int = 2
) -> dict[str, np.ndarray]:
    v = _channel(frames, channel_names, "v" if "v" in channel_names else channel_names[-1])
    return {"pattern_wavelength": dominant_wavelength(v), "v_mean": v.mean(axis=(-2, -1))}


def generic_stats(
    frames: np.ndarray, channel_names: list[str], n_dims: int = 2
) -> dict[str, np.ndarray]:
    first = frames[(..., 0) + (slice(None),) * n_dims]  # [..., *space]
    return {
        "spectral_wavelength": dominant_wavelength(first, n_dims),
        "variance": first.reshape(*first.shape[:-n_dims], -1).var(-1),
    }


STATISTICS: dict[str, StatFn] = {
    "navier_stokes2d": navier_stokes_stats,
    "gray_scott2d": gray_scott_stats,
}


def physics_statistics(
    dataset: str, frames: np.ndarray, channel_names: list[str], n_dims: int = 2
) -> dict[str, np.ndarray]:
    """The dataset's statistics of frames [..., C, *space] (physical units) → {name: [...]};
    headline first."""
    fn = STATISTICS.get(dataset, generic_stats) if n_dims == 2 else generic_stats
    try:
        return fn(np.asarray(frames), list(channel_names), n_dims)
    except MissingChannel:  # same name, other fields: the generic statistic still says something
        return generic_stats(np.asarray(frames), list(channel_names), n_dims)
