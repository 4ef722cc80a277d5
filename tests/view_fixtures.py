"""A folder of quickstart-sized runs for ``physfm view``: the tiny viscosity model of
tests/steer_fixtures, an evaluate run, a tokenizer evaluation, a probe and a steering direction,
plus a run whose metrics.json is corrupt. Nothing is trained (a few seconds on 2 cores); the
viewer's plumbing does not depend on a good model."""

from __future__ import annotations

import json
from pathlib import Path

from tests.steer_fixtures import build_tiny_viscosity_model

SYSTEM = "navier_stokes2d"
BROKEN = "broken"
DEFAULT_METHOD = "persistence"


def build_view_runs(root: Path) -> dict[str, Path]:
    from physfm.eval.evaluate import evaluate
    from physfm.interp.probe import run_probe
    from physfm.interp.steer import compute_direction
    from tokenizer.evaluate import evaluate_tokenizer

    paths = build_tiny_viscosity_model(root)
    export, shards = paths["export"], paths["shards"]
    # horizons with a gap
    evaluate(export, shards, [1, 2, 4], root / "evaluate", max_windows=2, batch_size=4)
    # A run whose default method is not the first listed (as when a refiner passed its held-out
    # check and "ar_refined" is the default): the viewer must open on it.
    metrics = json.loads((root / "evaluate" / "metrics.json").read_text())
    (root / "evaluate" / "metrics.json").write_text(
        json.dumps({**metrics, "default_method": DEFAULT_METHOD})
    )
    evaluate_tokenizer(
        paths["tokenizer"], shards, root / "tokenizer-eval", split="valid", max_batches=2, n_plots=1
    )
    selection = f"dataset=='{SYSTEM}'"
    run_probe(
        export,
        shards,
        "nu",
        root / "steer" / "probe",
        selection=selection,
        n_folds=2,
        max_windows=8,
    )
    direction = root / "steer" / "nu.direction"  # any name, as `physfm steer direction --out` takes
    feature, control = f"{selection} and nu>=0.005", f"{selection} and nu<0.005"
    compute_direction(
        export, shards, feature, control, ["blocks.1.resid"], direction, max_windows=8
    )
    (root / BROKEN).mkdir()
    # cut short, as by a full disk
    (root / BROKEN / "metrics.json").write_text('{"stages": {"simulate": ')
    return {**paths, "direction": direction, "root": root}
