"""Render one frame strip per built-in system into docs/systems/SYSTEM.png and write
docs/systems.md.

Each strip has one row per parameter set of the system's default sweep (its regimes) and shows the
first field: five frames spread over one trajectory for 2D systems, the middle z-slice for 3D ones,
and the whole x-t diagram for 1D ones.  One trajectory per row at the system's default resolution,
seed 0, so a strip shows what `physfm corpus` puts in the corpus.

Usage: python scripts/system_strips.py [--out docs] [--systems a,b]   (about a minute for 4 systems)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from data_pipelines.atomic import atomic_path, atomic_write_text, pyplot, save_figure
from data_pipelines.simulators import SIMULATORS, SystemSpec, parameter_grid, simulate_trajectories

N_FRAMES = 5  # columns of a 2D/3D strip
MAX_ROWS = 4  # parameter sets shown
DPI = 68


def label(params: dict[str, float], sep: str = ", ") -> str:
    return sep.join(f"{k}={v:g}" for k, v in params.items())


def render_strip(spec: SystemSpec, out_png: Path, seed: int = 0) -> Path:
    """Simulate one trajectory per parameter set and draw its first field (see the module
    docstring)."""
    plt = pyplot()
    grid = parameter_grid(spec, None)[:MAX_ROWS]
    n_cols = 1 if spec.n_spatial_dims == 1 else N_FRAMES
    # inches for the parameter column (2D/3D)
    label_width = 0.0 if spec.n_spatial_dims == 1 else 1.0
    fig, axes = plt.subplots(
        len(grid),
        n_cols,
        figsize=(1.3 * N_FRAMES + label_width, 1.35 * len(grid)),
        squeeze=False,
        constrained_layout=True,
    )
    for row, params in enumerate(grid):
        data = simulate_trajectories(spec, 1, spec.n_steps, spec.resolution, params, seed)
        frames = data.frames(0)[:, 0]  # [T, *space], the first field
        if spec.n_spatial_dims == 3:
            frames = frames[..., frames.shape[-1] // 2]  # middle z-slice
        lo, hi = np.percentile(frames, [1, 99])
        if spec.n_spatial_dims == 1:
            ax = axes[row, 0]
            ax.imshow(frames, aspect="auto", origin="lower", cmap="RdBu_r", vmin=lo, vmax=hi)
            ax.set_ylabel("t", fontsize=7)
            ax.set_xlabel("x", fontsize=7)
            ax.set_title(label(params), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        times = np.linspace(0, len(frames) - 1, n_cols).round().astype(int)
        for col, t in enumerate(times):
            ax = axes[row, col]
            ax.imshow(
                frames[t].T,
                origin="lower",
                cmap="RdBu_r",
                vmin=lo,
                vmax=hi,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"frame {t}", fontsize=7)
        # one parameter a line, horizontal: constrained layout then widens the label column to fit
        axes[row, 0].set_ylabel(
            label(params, "\n"), fontsize=6, rotation=0, ha="right", va="center"
        )
    fig.suptitle(
        f"{spec.name}: {spec.field_names[0] if spec.field_names else 'field 0'}", fontsize=8
    )
    return shrink_png(save_figure(fig, out_png, dpi=DPI))


def shrink_png(path: Path, colors: int = 48) -> Path:
    """Re-save with an adaptive palette: a third of the bytes of matplotlib's RGBA at no visible
    cost, so the strips stay small in the repository (matplotlib itself writes no palette PNGs)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    with atomic_path(path) as tmp:
        small.save(tmp, format="PNG", optimize=True)
    return path


def systems_markdown(specs: list[SystemSpec]) -> str:
    lines = [
        "# The built-in systems",
        "",
        "What `physfm corpus` simulates (`physfm simulate --list` prints the same table). Each strip shows the",
        "first field of one trajectory per parameter set of the default sweep: five frames (2D; 3D: the",
        "middle z-slice) or the x-t diagram (1D). Made by `python scripts/system_strips.py`.",
        "",
        "| system | dim | fields | default size | sweep |",
        "|---|---|---|---|---|",
    ]
    for spec in specs:
        grid = "x".join([str(spec.resolution)] * spec.n_spatial_dims)
        sweep = "; ".join(
            f"{k} = {', '.join(f'{v:g}' for v in vals)}" for k, vals in spec.default_params.items()
        )
        lines.append(
            f"| [{spec.name}](#{spec.name}) | {spec.n_spatial_dims}D | {', '.join(spec.field_names)} | "
            f"{spec.n_traj} traj x {spec.n_steps} frames x {grid} | {sweep} |"
        )
    for spec in specs:
        lines += ["", f"## {spec.name}", "", spec.description, ""]
        lines += [f"- {regime}" for regime in spec.regimes]
        lines += ["", f"![{spec.name}](systems/{spec.name}.png)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="docs", help="folder for systems.md and systems/*.png (default: docs)"
    )
    parser.add_argument(
        "--systems", default="", help="comma-separated subset (default: all; the page lists all)"
    )
    args = parser.parse_args(argv)
    chosen = [n for n in args.systems.split(",") if n] or list(SIMULATORS)
    unknown = [n for n in chosen if n not in SIMULATORS]
    if unknown:
        print(
            f"system_strips: unknown system(s) {', '.join(unknown)}; built-in: {', '.join(SIMULATORS)}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    for name in chosen:
        png = render_strip(SIMULATORS[name], out / "systems" / f"{name}.png")
        print(f"{png}: {png.stat().st_size / 1024:.0f} KB")
    atomic_write_text(out / "systems.md", systems_markdown(list(SIMULATORS.values())))
    print(f"wrote {out / 'systems.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
