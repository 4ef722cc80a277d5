"""bench/forecast.py's pure helpers (budgets, verdicts, table) on small dicts: no data, no
training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_module import load_bench


@pytest.fixture(scope="module")
def forecast():
    yield from load_bench("forecast")


def scores(model, persistence, fno):
    """A per-system entry with model/persistence/fno VRMSE at h = 1, 4, 8, 16 (given as 4-tuples; a
    3-tuple's h=16 repeats its h=8), raw = model and copy-tokens = 2 x model at h=1."""
    out = {}
    for i, h in enumerate((1, 4, 8, 16)):
        j = min(i, len(model) - 1)
        out.update({f"model_{h}": model[j], f"persistence_{h}": persistence[j], f"fno_{h}": fno[j]})
    return {**out, "raw_1": model[0], "copy_tokens_1": 2 * model[0]}


def test_headline_wins(forecast):
    per_system = {
        # beats persistence
        "gray_scott2d@64": scores((0.1, 0.2, 0.3), (0.2, 0.3, 0.5), (0.05, 0.1, 0.2)),
        # h8 win, persistence > 1
        "navier_stokes2d@64": scores((0.5, 0.9, 1.1), (0.4, 0.9, 1.2), (0.6, 1.0, 1.3)),
        "wave2d@64": scores((0.3, 0.5, 0.7), (0.4, 0.6, 0.8), (0.2, 0.4, 0.6)),
        "burgers1d": scores((0.2, 0.3, 0.4), (0.1, 0.2, 0.3), (0.3, 0.4, 0.5)),
    }
    out = forecast.headline(per_system, 23.456)
    assert out["wins_persistence_1"] == ["gray_scott2d@64", "wave2d@64"]
    # NS: persistence_8 = 1.2 ≥ 1
    assert out["wins_persistence_8"] == ["gray_scott2d@64", "wave2d@64"]
    assert out["wins_fno_1"] == ["navier_stokes2d@64", "burgers1d"]
    # 1.2 < 1.5
    assert out["wins_persistence_16"] == ["gray_scott2d@64", "navier_stokes2d@64", "wave2d@64"]
    assert out["raw_vs_copy_tokens_1"]["burgers1d"] == 0.5
    assert out["n_systems"] == 4
    assert out["frames_per_s"] == 23.46
    json.dumps(out)  # the last line must serialise


def test_per_system_entry_uses_the_default_method(forecast):
    methods = ("ar", "ar_refined", "persistence", "fno", "tokenizer_ceiling", "copy_tokens")
    mean = {m: {str(h): i + h / 10 for h in (1, 4, 8, 16)} for i, m in enumerate(methods)}
    entry = forecast.per_system_entry(mean, "ar_refined")
    assert entry["model_1"] == 1.1 and entry["raw_1"] == 0.1 and entry["model_8"] == 1.8
    required = {"model_1", "model_4", "model_8", "persistence_1", "persistence_4", "persistence_8"}
    assert required | {"fno_1", "fno_8", "ceiling_1", "copy_tokens_1"} <= set(entry)
    assert {"raw_16", "model_16", "persistence_16", "fno_16"} <= set(entry)
    # no refiner: the raw model is the default
    assert forecast.per_system_entry(mean, "ar")["model_4"] == 0.4


def test_system_labels(forecast):
    assert forecast.system_label("gray_scott2d", 64) == "gray_scott2d@64"
    assert forecast.system_label("navier_stokes2d", 32) == "navier_stokes2d@32"
    assert forecast.system_label("burgers1d", None) == "burgers1d"
    labels = [forecast.system_label(*s) for g in forecast.GROUPS for s in g.systems]
    assert len(labels) == len(set(labels)) == 5


def test_default_budget_fits_twenty_minutes(forecast):
    budgets = forecast.plan_budgets(20)
    assert set(budgets) == {g.name for g in forecast.GROUPS}
    assert sum(g.share for g in forecast.GROUPS) == pytest.approx(1.0)
    ours = sum(sum(b.values()) for b in budgets.values())
    assert ours == pytest.approx(20 * 60 * forecast.OURS_FRACTION)
    rows = forecast.ablation_rows(forecast.DEFAULT_ABLATION_ROWS)
    training = forecast.planned_training_seconds(budgets, forecast.ablation_groups("ns32"), rows)
    # data (~35 s), encoding, evaluation and frames/s need the rest: keep 15 % of the 20 minutes
    # for them (a fifth before the flow-matching row joined the default rows: +47 s of training)
    assert training <= 0.85 * 20 * 60
    assert forecast.planned_training_seconds(budgets, []) == pytest.approx(2 * ours)
    # a stage flag is the total over groups
    assert sum(
        b["ar"] for b in forecast.plan_budgets(20, ar_seconds=100).values()
    ) == pytest.approx(100)


def test_ablation_choice(forecast):
    assert forecast.ablation_groups("none") == []
    assert forecast.ablation_groups("ns32") == ["ns32"]
    assert forecast.ablation_groups("all") == [g.name for g in forecast.GROUPS]
    with pytest.raises(SystemExit, match="--ablations"):
        forecast.ablation_groups("ns64")
    assert forecast.ablation_rows("digits_head,greedy_mean") == ["digits_head", "greedy_mean"]
    with pytest.raises(SystemExit, match="--ablation-rows"):
        forecast.ablation_rows("raster,nope")


def test_group_overrides_and_curve(forecast):
    assert set(forecast.GROUP_SHIFT) >= {g.name for g in (*forecast.GROUPS, *forecast.CURVE_GROUPS)}
    extra = forecast.group_ar_overrides("ns32", ("stability.shift=GROUP",))
    assert extra[-1] == "stability.shift=[1,2]"
    curve = {"ns32": {"0.5": {f"{k}_{h}": 0.1 for k in ("raw", "model", "fno") for h in (1, 8)}}}
    curve["ns32"]["0.5"].update(steps_ar=10, steps_fno=20)
    assert "0.5x" in forecast.format_curve(curve)


def test_flow_matching_row(forecast):
    """The continuous alternative: a default row, costed as the AR model + its refiner, printed
    under its own label with its frames/s."""
    assert "flow_matching" in forecast.ABLATIONS
    assert "flow_matching" in forecast.ablation_rows(forecast.DEFAULT_ABLATION_ROWS)
    assert forecast.ablation_rows("flow_matching") == ["flow_matching"]
    budgets = forecast.plan_budgets(20)
    ns32 = budgets["ns32"]
    extra = forecast.planned_training_seconds(budgets, ["ns32"], ("flow_matching",))
    assert extra - forecast.planned_training_seconds(budgets, []) == pytest.approx(
        ns32["ar"] + ns32["refiner"]
    )
    row = {"1": 0.25, "4": 0.5, "8": 0.75, "16": 1.125}
    table = {"navier_stokes2d@32": {"persistence": row, "flow_matching": row}}
    lines = forecast.format_table(table, {"flow_matching": 3.25}).splitlines()
    fm = next(line for line in lines if line.startswith("abl: flow matching"))
    assert fm.split()[-5:] == ["0.250", "0.500", "0.750", "1.125", "3.2"]


def test_flow_matching_row_scored_by_the_diffusion_method(forecast, monkeypatch):
    """run_ablations asks a flow-matching model for its "diffusion" scores (an AR row for raw and
    refined) and files them in the table, the ablations JSON and the frames/s."""
    from types import SimpleNamespace

    row = {str(h): h / 100 for h in forecast.HORIZONS}
    flow = SimpleNamespace(
        kind="diffusion", method="diffusion", refines_by_default=False, rollout=print
    )
    ar = SimpleNamespace(kind="ar", method="ar", refines_by_default=True, rollout=print)
    asked = {}

    def score(model, shards, methods, args, extra=None):
        asked[model.kind] = methods
        return {"vrmse": {"navier_stokes2d": {"mean": dict.fromkeys(methods, row)}}}

    monkeypatch.setattr(forecast, "score", score)
    monkeypatch.setattr(
        forecast, "train_ablations", lambda *a: {"flow_matching": flow, "shift": ar}
    )
    monkeypatch.setattr(forecast, "first_test_window", lambda shards, name: None)
    monkeypatch.setattr(forecast, "rollout_rate", lambda forecast_fn, ctx, n: 2.5)
    res = forecast.GroupResult({"navier_stokes2d@32": {}}, {}, {}, {}, {}, {})
    pm = SimpleNamespace(dataset_names=["navier_stokes2d"])
    trained = forecast.Trained(
        Path("shards"), {"navier_stokes2d": "navier_stokes2d@32"}, None, pm, None
    )
    args = forecast.parse_args(["--ablation-rows", "flow_matching,shift"])
    group = forecast.GROUPS[1]
    forecast.run_ablations(trained, {}, Path("work"), group, args, res)
    assert asked == {"diffusion": ("diffusion",), "ar": ("ar", "ar_refined")}
    entry = res.ablations["navier_stokes2d@32"]["flow_matching"]
    assert entry == {
        "diffusion_1": 0.01,
        "diffusion_4": 0.04,
        "diffusion_8": 0.08,
        "diffusion_16": 0.16,
        "default_method": "diffusion",
    }
    assert res.ablations["navier_stokes2d@32"]["shift"]["default_method"] == "ar_refined"
    assert res.table["navier_stokes2d@32"]["flow_matching"] == row
    assert res.fps["flow_matching"] == 2.5
    assert forecast.parse_args([]).ablation_rows == forecast.DEFAULT_ABLATION_ROWS


def test_table_marks_missing_rows(forecast):
    row = {"1": 0.1, "4": 0.2, "8": 0.3, "16": 0.4}
    table = {
        "navier_stokes2d@32": {"persistence": row, "ar_refined": row, "raster": row},
        "burgers1d": {"persistence": row, "ar_refined": row},
    }
    text = forecast.format_table(table, {"ar_refined": 12.5})
    lines = text.splitlines()
    assert any(line.startswith("abl: raster AR") and "–" in line for line in lines)
    assert not any(line.startswith("FNO") for line in lines)  # a row no system has is left out
    assert "12.5" in next(line for line in lines if line.startswith("ours + refine"))
