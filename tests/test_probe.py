"""Probes: grouped ridge cross-validation, the probe run end to end with its baselines, and the
CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipelines.errors import DataError
from physfm.interp.probe import Probe, choose_scale, group_keys, run_probe
from physfm.interp.ridge import cross_validate, fit_final, group_folds, r2_score
from tests.steer_fixtures import export_tiny_model, make_param_tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    return make_param_tokens(
        root / "tokens", nu_values=(1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)
    ), export_tiny_model(root / "m")


def test_group_folds_never_split_a_group():
    groups = [f"traj{i // 7}" for i in range(70)]
    seen = set()
    for train, test in group_folds(groups, 4):
        test_groups = {groups[i] for i in test}
        assert not test_groups & {groups[i] for i in train}
        seen |= test_groups
    assert seen == set(groups)
    with pytest.raises(ValueError, match="at least 2 groups"):
        group_folds(["a"] * 5, 3)


def test_ridge_cross_validation_recovers_a_linear_signal_and_not_noise():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 40))
    y = X @ rng.normal(size=40) + rng.normal(0, 1.0, 240)
    groups = [i // 8 for i in range(240)]
    good = cross_validate(X, y, groups)
    assert good["score"] > 0.9 and len(good["alphas"]) == 5
    noise = cross_validate(rng.normal(size=(240, 40)), y, groups)
    # held-out R² of a probe on unrelated features stays near (or below) 0
    assert noise["score"] < 0.1
    labels = np.sign(y - np.median(y))
    assert cross_validate(X, labels, groups, classify=True)["score"] > 0.85
    model = fit_final(X, y, groups)
    assert r2_score(y, model.predict(X)) > 0.9


def test_scale_and_groups():
    assert choose_scale(np.array([1e-3, 1e-2]), "auto") == "log"
    assert choose_scale(np.array([1.0, 2.0]), "auto") == "linear"
    metas = [{"split": "test", "source_file": "a.hdf5", "trajectory": t} for t in (0, 1)]
    assert (
        len(set(group_keys(metas, "trajectory"))) == 2 and len(set(group_keys(metas, "file"))) == 1
    )


def test_run_probe_writes_metrics_baselines_plot_and_a_loadable_probe(setup, tmp_path):
    tokens, export = setup
    m = run_probe(export, tokens, "nu", tmp_path / "probe", split="valid,test", n_folds=4)
    assert m["scale"] == "log" and m["n_windows"] == 5 * 2 * 6 * 2 and m["n_groups"] == 20
    assert list(m["layers"]) == ["embedding", "blocks.0.resid", "blocks.1.resid"]
    # the codes' mean rises with log ν: the histogram baseline reads it, and so do the layers
    assert m["probe_r2_code_histogram"] > 0.8 and m["probe_r2"] > 0.5
    assert m["best_layer"] in ("blocks.0.resid", "blocks.1.resid")
    for name in ("metrics.json", "report.md", "r2_per_layer.png", "probe.safetensors"):
        assert (tmp_path / "probe" / name).is_file(), name
    assert json.loads((tmp_path / "probe" / "metrics.json").read_text())["target"] == "nu"
    assert "| code histogram (baseline) |" in (tmp_path / "probe" / "report.md").read_text()
    probe = Probe.load(tmp_path / "probe")
    from physfm.interp.activations import ActivationStore

    store = ActivationStore(tmp_path / "probe" / "activations")
    pred = probe.predict(probe.best_point, store.load(probe.best_point).numpy())
    truth = np.array([x["params"]["nu"] for x in store.meta()])
    # in ν's own units
    assert pred.min() > 0 and np.corrcoef(np.log(pred), np.log(truth))[0, 1] > 0.7
    with pytest.raises(
        DataError, match="no window has the simulation parameter .reynolds.*drag, nu"
    ):
        run_probe(export, tokens, "reynolds", tmp_path / "bad", split="valid")


@pytest.mark.slow
def test_probe_cli(setup, tmp_path, capsys):
    from physfm.cli import main

    tokens, export = setup
    rc = main(
        [
            "probe",
            "--ckpt",
            str(export),
            "--data",
            str(tokens),
            "--target",
            "nu",
            "--out",
            str(tmp_path / "p"),
            "--split",
            "test",
            "--points",
            "blocks.1.resid",
            "--group-by",
            "file",
            "--folds",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "blocks.1.resid" in out and "code histogram" in out
    assert (
        main(
            [
                "probe",
                "--ckpt",
                str(export),
                "--data",
                str(tokens),
                "--target",
                "nu",
                "--out",
                str(tmp_path / "q"),
                "--select",
                "nu <",
            ]
        )
        == 2
    )
    assert "selection" in capsys.readouterr().err
