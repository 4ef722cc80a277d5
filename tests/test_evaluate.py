"""physfm evaluate: VRMSE equals The Well's, persistence beside every model number, report and plots
written."""

import json

import pytest
import torch

from physfm.cli import main as physfm
from physfm.eval.evaluate import BASELINES, evaluate, render_report
from physfm.eval.windows import evaluation_windows
from physfm.inference import PhysicsModel
from tests.rollout_fixtures import build_tiny_model


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    paths = build_tiny_model(root, datasets=("ripples", "waves"))
    metrics = evaluate(paths["export"], paths["shards"], [1, 2, 6], root / "eval", batch_size=8)
    return paths, root / "eval", metrics


def well_vrmse(pred, truth):
    """the_well.benchmark.metrics.VRMSE on our [B, T, C, H, W] tensors (it wants channels last)."""
    from the_well.benchmark.metrics import VRMSE
    from the_well.data.datasets import WellMetadata

    C, shape = truth.shape[2], tuple(truth.shape[3:])
    meta = WellMetadata(
        dataset_name="t",
        n_spatial_dims=len(shape),
        spatial_resolution=shape,
        scalar_names=[],
        constant_scalar_names=[],
        field_names={0: [f"f{i}" for i in range(C)]},
        constant_field_names={},
        boundary_condition_types=["PERIODIC"],
        n_files=1,
        n_trajectories_per_file=[1],
        n_steps_per_trajectory=[truth.shape[1]],
    )
    return VRMSE()(pred.movedim(2, -1), truth.movedim(2, -1), meta)  # [B, T, C]


def test_reported_vrmse_equals_the_wells_on_the_same_tensors(evaluated):
    paths, _, metrics = evaluated
    pm = PhysicsModel.from_pretrained(paths["export"])
    windows = [
        b
        for b in evaluation_windows(paths["shards"], "test", 6, batch_size=8)
        if b.dataset == "waves"
    ]
    truth = torch.cat([b.truth for b in windows]).double()
    context = torch.cat([b.context for b in windows]).double()
    model = pm.rollout(context, 6, "waves", batch_size=8).double()
    persistence = context[:, -1:].expand_as(truth)
    fields = metrics["vrmse"]["waves"]["fields"]
    ceiling = pm.tokenizer_ceiling(context.float(), truth.float(), "waves").double()
    copy = pm.copy_tokens(context.float(), 6, "waves").double()
    for method, pred in (
        ("ar", model),
        ("persistence", persistence),
        ("tokenizer_ceiling", ceiling),
        ("copy_tokens", copy),
    ):
        theirs = well_vrmse(pred, truth).mean(0)  # [H, C], averaged over windows like ours
        for h in (1, 2, 6):
            for j, field in enumerate(["u", "vel_x", "vel_y"]):
                assert fields[field][method][str(h)] == pytest.approx(
                    float(theirs[h - 1, j]), rel=1e-4
                ), (
                    method,
                    h,
                    field,
                )


def test_persistence_and_baselines_beside_every_model_number(evaluated):
    _, out, metrics = evaluated
    assert metrics["methods"] == ["ar", *BASELINES]
    # 2 trajectories × (14 - (4 + 6) + 1) windows
    assert metrics["n_windows"] == {"ripples": 10, "waves": 10}
    for name, d in metrics["vrmse"].items():
        for field, per in d["fields"].items():
            for method in metrics["methods"]:
                assert set(per[method]) == {"1", "2", "6"}, (name, field, method)
        assert len(metrics["curves"][name]["persistence"]) == 6
    # Moving waves: persistence degrades with the horizon; the flag says where it passed 1.
    curve = metrics["curves"]["waves"]["persistence"]
    assert curve[0] < curve[-1] and curve[-1] > 1.0
    assert "waves/u" in metrics["persistence_above_1"]
    report = (out / "report.md").read_text()
    assert "VRMSE 1.0 is what predicting the spatial mean scores" in report
    assert '"beating" persistence there means nothing' in report
    assert "(persistence > 1: not meaningful)" in report
    assert "| waves | u |" in report and "| ripples | vel_y |" in report
    assert json.loads((out / "metrics.json").read_text())["overall"] == metrics["overall"]


def test_plots_written(evaluated):
    _, out, metrics = evaluated
    for name in ("vrmse_vs_horizon.png", "rollout_waves.png", "rollout_ripples.png"):
        assert (out / name).stat().st_size > 5000, name
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert set(metrics["figures"]) == {
        "vrmse_vs_horizon.png",
        "rollout_waves.png",
        "rollout_ripples.png",
    }


def test_report_calls_out_a_model_beating_persistence():
    metrics = {
        "checkpoint": "c",
        "shards": "s",
        "split": "test",
        "horizons": [1],
        "n_windows": {"d": 3},
        "methods": ["ar", "persistence"],
        "overall": {"ar": {"1": 0.2}, "persistence": {"1": 0.3}},
        "vrmse": {
            "d": {
                "fields": {
                    "u": {"ar": {"1": 0.2}, "persistence": {"1": 0.3}},
                    "v": {"ar": {"1": 0.5}, "persistence": {"1": 0.3}},
                }
            }
        },
    }
    report = render_report(metrics)
    assert "| d | u | 0.200 | 0.300 | ar |" in report and "| d | v | 0.500 | 0.300 | no |" in report


@pytest.mark.slow
def test_evaluate_and_rollout_cli(evaluated, tmp_path, capsys):
    paths, _, _ = evaluated
    common = ["--ckpt", str(paths["export"]), "--data", str(paths["shards"]), "--max-windows", "3"]
    assert physfm(["evaluate", *common, "--horizons", "1,2", "--out", str(tmp_path / "ev")]) == 0
    assert "persistence" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_windows"] == {
        "ripples": 3,
        "waves": 3,
    }
    assert physfm(["rollout", *common, "--horizon", "2", "--out", str(tmp_path / "ro")]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ro" / "predictions" / "waves.safetensors"), "pt") as f:
        assert f.get_tensor("prediction").shape == (3, 2, 3, 16, 16)
        assert f.get_tensor("truth").shape == (3, 2, 3, 16, 16)
        assert len(json.loads(f.metadata()["windows"])) == 3
    assert (tmp_path / "ro" / "rollout_waves.png").is_file()
    # Asking for a refiner the model does not have is a one-line user error.
    assert physfm(["evaluate", *common, "--refine", "--out", str(tmp_path / "x")]) == 2
    assert "no refiner" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_refine_and_evaluate_stages(evaluated, tmp_path, monkeypatch):
    from physfm.quickstart import evaluate as quickstart_eval
    from physfm.quickstart.pipeline import STAGES, Context

    paths, _, _ = evaluated
    names = [n for n, _ in STAGES]
    assert names.index("pretrain") < names.index("refine") < names.index("evaluate")
    monkeypatch.setattr(
        quickstart_eval,
        "REFINE_OVERRIDES",
        ["train.steps=20", "data.n_windows=4", "data.val_windows=2", "model.width=8"],
    )
    ctx = Context(out=tmp_path)
    with pytest.raises(RuntimeError, match="needs ar_run"):
        quickstart_eval.stage_evaluate(ctx)
    ctx.state.update(ar_run=str(paths["export"]), shards=str(paths["shards"]))
    refine = quickstart_eval.stage_refine(ctx)
    assert refine["steps"] == 20 and "valid_vrmse_refined" in refine
    result = quickstart_eval.stage_evaluate(ctx)
    # two datasets, capped per dataset
    assert result["windows"] == 2 * quickstart_eval.EVAL_MAX_WINDOWS
    assert {"ar_1", "ar_refined_2", "persistence_2"} <= set(result)
    assert all((tmp_path / path).is_file() for _, path in ctx.figures) and len(ctx.figures) == 3
    assert "spatial-mean predictor" in ctx.notes[0]


@pytest.mark.parametrize("space", [(16, 16), (32,)])
def test_rollout_strip_reads_as_a_table(tmp_path, monkeypatch, space):
    """One panel per field; columns truth | methods | errors; rows the steps (capped); a colour bar
    for the field and a zero-centred one for the errors (2D); the PNG is written."""
    import physfm.eval.plots as plots

    shown = {}
    save = plots.save_figure

    def keep_and_save(fig, path, dpi):
        shown["fig"] = fig
        return save(fig, path, dpi)

    monkeypatch.setattr(plots, "save_figure", keep_and_save)
    truth = torch.randn(10, 2, *space)
    preds = {"ar": truth + 0.1, "ar_refined": truth - 0.2}
    path = plots.rollout_strip(
        truth, preds, ["u", "v"], tmp_path / "strip.png", title="t", max_rows=4
    )
    assert path.read_bytes()[:4] == b"\x89PNG"
    fig = shown["fig"]
    panels = fig.subfigs
    assert [p._suptitle.get_text() for p in panels] == ["u", "v"]
    cells = [ax for ax in panels[0].axes if ax.get_label() != "<colorbar>"]
    assert len(cells) == 4 * 5  # 4 of the 10 steps × (truth, 2 predictions, 2 errors)
    assert [ax.get_title() for ax in cells[:5]] == [
        "truth",
        "AR model",
        "AR + refiner",
        "error: AR model",
        "error: AR + refiner",
    ]
    assert [cells[i * 5].get_ylabel() for i in range(4)] == ["t+1", "t+4", "t+7", "t+10"]
    bars = [ax for ax in panels[0].axes if ax.get_label() == "<colorbar>"]
    if len(space) == 2:
        assert len(bars) == 2
        error_image = cells[3].get_images()[0]
        lo, hi = error_image.get_clim()
        # zero-centred, shared by both methods
        assert lo == -hi and hi == pytest.approx(0.2, rel=1e-5)
        # one scale per field
        assert cells[0].get_images()[0].get_clim() == cells[1].get_images()[0].get_clim()
    else:
        assert not bars and cells[0].get_ylim() == cells[1].get_ylim()
