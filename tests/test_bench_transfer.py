"""bench/transfer.py: its argument checks, the held-out split, the JSON verdicts and table from
fake results, and the per-system error capture; plus the U-Net baseline's shapes. No pretraining
here (the bench's smallest useful run takes minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.bench_module import load_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def transfer():
    yield from load_bench("transfer")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pretrain-minutes", "0"], "--pretrain-minutes: must be > 0"),
        (["--corpus-size", "huge"], "--corpus-size: choose one of"),
        (["--held-out", "kdv1d,burgers1d"], "both 1d; one per role"),
        (["--held-out", "wave2d"], "wave2d is neither"),
        (["--held-out", "nope2d"], "unknown system(s) nope2d"),
        (["--systems", "burgers1d,wave2d"], "1 2D system(s) left"),
        (["--finetune-config", "/no/such.yaml"], "--finetune-config: /no/such.yaml not found"),
        (["--fine-tune-on", "wave2d"], "--fine-tune-on: wave2d not in --held-out"),
    ],
)
def test_bad_flags_exit_2_with_one_line(transfer, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        transfer.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_default_split_holds_out_one_per_role_and_pretrains_on_the_other_2d(transfer):
    args = transfer.parse_args([])
    roles = {transfer.role(s): s for s in args.held_out}
    assert set(roles) == {"1d", "3d", "fluid", "pattern"}
    assert not set(args.held_out) & set(args.pretrain_systems)
    assert all(transfer.SIMULATORS[s].n_spatial_dims == 2 for s in args.pretrain_systems)
    # every 2D system is in one of the two lists
    two_d = {s for s, spec in transfer.SIMULATORS.items() if spec.n_spatial_dims == 2}
    assert two_d == set(args.pretrain_systems) | {roles["fluid"], roles["pattern"]}
    assert args.finetune_config.name in {"recipe.yaml", "tiny.yaml"}
    assert args.fine_tune_on == args.held_out


def test_scaling_subsets_are_nested_and_seeded(transfer):
    pool = ["a", "b", "c", "d", "e", "f", "g"]
    subsets = transfer.scaling_subsets(pool, seed=0)
    assert list(subsets) == ["2", "5", "all"]
    assert len(subsets["2"]) == 2 and len(subsets["5"]) == 5 and subsets["all"] == pool
    assert set(subsets["2"]) <= set(subsets["5"])
    assert subsets == transfer.scaling_subsets(pool, seed=0)
    assert list(transfer.scaling_subsets(pool[:4], seed=0)) == ["2", "all"]


def entry(ft, scratch, fno, persistence):
    """A per-system entry with h=1/8/16 values given as 3-tuples."""
    out = {}
    for key, vals in (
        ("finetuned", ft),
        ("scratch", scratch),
        ("fno", fno),
        ("persistence", persistence),
    ):
        out.update({f"{key}_{h}": v for h, v in zip((1, 8, 16), vals)})
    return out


def test_headline_and_scaling_from_fake_results(transfer):
    per_system = {
        "burgers1d": entry((0.1, 0.5, 0.9), (0.2, 0.6, 1.0), (0.05, 0.4, 0.8), (0.2, 0.7, 1.1)),
        # wins scratch at h=1 only; persistence_8 >= 1.5 (no h=8 verdict)
        "shear_flow2d": entry((0.3, 0.9, 1.2), (0.4, 0.8, 1.1), (0.5, 1.0, 1.4), (0.4, 1.6, 2.0)),
        "swift_hohenberg2d": entry(
            (0.2, 0.3, None), (0.3, 0.4, None), (0.3, 0.5, None), (0.1, 0.2, None)
        ),
        "gray_scott3d": {"error": "DataError: 3D data on a 2D tokenizer", "fno_1": 0.2},
    }
    out = transfer.headline(per_system)
    assert out["wins_scratch"] == ["burgers1d", "swift_hohenberg2d"]
    assert out["wins_fno_1"] == ["shear_flow2d", "swift_hohenberg2d"]
    assert out["wins_persistence_1"] == ["burgers1d", "shear_flow2d"]
    assert out["wins_persistence_8"] == ["burgers1d"]
    scaling = {
        "burgers1d": {"2": 0.3, "5": 0.2, "all": 0.1},
        "shear_flow2d": {"2": 0.3, "5": 0.4, "all": 0.1},
        "gray_scott3d": {"2": None, "5": None, "all": None},
    }
    assert transfer.scaling_falls(scaling) == ["burgers1d"]
    table = transfer.format_table(per_system)
    assert "gray_scott3d: fine-tune failed: DataError: 3D data on a 2D tokenizer" in table
    fine_tuned = next(line for line in table.splitlines() if line.startswith("fine-tuned"))
    assert "error" in fine_tuned and "0.100" in fine_tuned
    json.dumps({"per_system": per_system, **out})


def test_a_refused_fine_tune_is_recorded_and_the_baselines_still_run(
    transfer, tmp_path, monkeypatch
):
    from data_pipelines.errors import DataError

    def refuse(*args, **kwargs):
        raise DataError("gray_scott3d: 3D data on a 2D tokenizer\nsecond line")

    monkeypatch.setattr(transfer, "finetune_steps", lambda *a: 10)
    monkeypatch.setattr(transfer, "run_finetune_budget", refuse)
    monkeypatch.setattr(
        transfer,
        "baselines",
        lambda shards, data, seconds, args: {
            "scores": {k: {"1": 0.5, "8": 0.9} for k in ("fno", "unet", "persistence")},
            "steps": {"fno": 3, "unet": 4},
        },
    )
    args = transfer.parse_args(["--finetune-minutes", "0.5"])
    result = transfer.held_out_result(
        "gray_scott3d", {"run": "x"}, tmp_path, tmp_path, args.finetune_config, args, tmp_path
    )
    assert result["error"] == "DataError: gray_scott3d: 3D data on a 2D tokenizer"
    assert result["fno_1"] == 0.5 and result["unet_8"] == 0.9 and result["fno_16"] is None
    assert "finetuned_1" not in result
    assert result["seconds"]["baselines_each"] == 30.0
    point = transfer.scaling_point(
        "gray_scott3d", {"run": "x"}, tmp_path, tmp_path, args.finetune_config, args, tmp_path
    )
    assert point == {"error": result["error"]}


def test_cache_reuses_only_identical_inputs(transfer, tmp_path):
    calls = []

    def build(out):
        calls.append(out)
        return {"n": len(calls)}

    assert transfer.cached(tmp_path / "step", {"a": 1}, build) == {"n": 1}
    assert transfer.cached(tmp_path / "step", {"a": 1}, build) == {"n": 1}
    assert transfer.cached(tmp_path / "step", {"a": 2}, build) == {"n": 2}


@pytest.mark.parametrize("shape", [(16,), (8, 12), (8, 8, 8)])
def test_unet_keeps_the_grid_in_1d_2d_3d(shape):
    from bench.unet_baseline import UNet, unet_levels

    levels = unet_levels(shape, 4)
    assert levels == {(16,): 3, (8, 12): 2, (8, 8, 8): 2}[shape]
    model = UNet(len(shape), 8, 2, features=4, levels=levels)
    assert model(torch.randn(2, 8, *shape)).shape == (2, 2, *shape)


def test_report_prints_the_table_then_one_json_line(transfer, capsys):
    args = transfer.parse_args(["--skip-scaling"])
    per_system = {
        "burgers1d": entry((0.1, 0.5, 0.9), (0.2, 0.6, 1.0), (0.05, 0.4, 0.8), (0.2, 0.7, 1.1)),
        "gray_scott3d": {"error": "DataError: 3D", "fno_1": 0.2, "fno_8": 0.5, "fno_16": None},
    }
    scaling = {"burgers1d": {"all": 0.1}, "gray_scott3d": {"all": None}}
    timing = {"tokenizer_s": 600.0, "ar_s": 1100.0}  # of the default 1,800 s
    pre = {"all": {"run": "r", "ar_steps": 5, **timing, "inputs": {"systems": ["a"]}}}
    out = transfer.report(args, per_system, scaling, pre, {"all": ["a", "b"]}, 12.34)
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == json.loads(json.dumps(out))
    assert out["wins_scratch"] == ["burgers1d"] and out["scaling_falls"] == []
    assert out["pretrain"]["all"] == {"run": "r", "ar_steps": 5, **timing}
    assert out["pretrain_budget_used"] == {"all": 0.94}
    assert (
        "pretraining all: 600 s tokenizer + 1100 s AR = 5 AR steps, 94% of the 1800 s budget"
        in lines
    )
    assert not any("warning" in line for line in lines)
    assert any(line.startswith("FNO (The Well) scratch") for line in lines)


def test_report_says_which_weights_were_kept_and_where_validation_bottomed_out(transfer, capsys):
    args = transfer.parse_args(["--skip-scaling"])
    curve = {"best_step": 9, "last_step": 29, "overfit": True}
    per_system = {
        "burgers1d": {
            **entry((0.1, 0.5, 0.9), (0.2, 0.6, 1.0), (0.05, 0.4, 0.8), (0.2, 0.7, 1.1)),
            "kept": "zeroshot",
            "learning": {"finetuned": curve, "scratch": {**curve, "overfit": False}},
        },
        "gray_scott3d": {"error": "DataError: 3D", "fno_1": 0.2, "fno_8": 0.5, "fno_16": None},
    }
    pre = {"all": {"run": "r", "ar_steps": 5, "tokenizer_s": 600.0, "ar_s": 1100.0, "inputs": {}}}
    transfer.report(args, per_system, {}, pre, {"all": ["a"]}, 1.0)
    out = capsys.readouterr().out
    assert "  burgers1d           kept zeroshot, finetuned 9/29*, scratch 9/29\n" in out
    assert "  gray_scott3d        kept ?\n" in out


def test_report_flags_a_pretraining_run_that_stopped_well_short_of_its_budget(transfer, capsys):
    """A step time measured on a busy machine sets too few steps: that point of the scaling row is
    not at the others' budget, and the report says so."""
    args = transfer.parse_args([])
    scaling = {"burgers1d": {"2": 0.3, "all": 0.2}}
    pre = {
        "all": {"run": "a", "ar_steps": 301, "tokenizer_s": 622.0, "ar_s": 924.0, "inputs": {}},
        "2": {"run": "b", "ar_steps": 119, "tokenizer_s": 635.0, "ar_s": 504.0, "inputs": {}},
    }
    per_system = {
        "burgers1d": entry((0.1, 0.5, 0.9), (0.2, 0.6, 1.0), (0.05, 0.4, 0.8), (0.2, 0.7, 1.1))
    }
    out = transfer.report(
        args, per_system, scaling, pre, {"2": ["a", "b"], "all": ["a", "b", "c"]}, 1.0
    )
    text = capsys.readouterr().out
    assert out["pretrain_budget_used"] == {"all": 0.86, "2": 0.63}
    assert "warning: pretraining 2 used 63% of its budget" in text
    assert "warning: pretraining all" not in text


def test_scaling_points_merge_flat_per_system(transfer):
    """Each pretraining run adds {system: {tag: value}}; the row must stay one flat dict per system
    (a nested point once crashed the report after a 3.5 h run)."""
    scaling = {"burgers1d": {"all": 0.34}}
    transfer.add_scaling_points(scaling, {"burgers1d": {"2": 0.26}, "gray_scott3d": {"2": 0.29}})
    transfer.add_scaling_points(scaling, {"burgers1d": {"5": 0.27}})
    assert scaling == {
        "burgers1d": {"all": 0.34, "2": 0.26, "5": 0.27},
        "gray_scott3d": {"2": 0.29},
    }
    assert transfer.scaling_falls({"burgers1d": {"2": 0.3, "5": 0.2, "all": 0.1}}) == ["burgers1d"]
