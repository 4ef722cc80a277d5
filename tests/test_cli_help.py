"""``--help`` says what every option is and what it defaults to; a count given as 0 is refused like
any other count below 1 (never read as "not given", which would silently use the default)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from data_pipelines.errors import DataError
from physfm.cli import main
from physfm.cli.main import build_parser


def every_parser(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += every_parser(sub)
    return found


def verb_help(capsys, *verb: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*verb, "--help"])
    assert stop.value.code == 0
    # argparse wraps lines: compare on single spaces
    return " ".join(capsys.readouterr().out.split())


def test_every_option_and_action_of_every_verb_has_help_text() -> None:
    missing = []
    for parser in every_parser(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{parser.prog} {a.dest}"
                    for a in action._choices_actions
                    if not (a.help or "").strip()
                ]
            elif not (action.help or "").strip():
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"


def test_help_shows_every_default(capsys) -> None:
    for parser in every_parser(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            unset = action.default in (None, argparse.SUPPRESS, []) or action.default is False
            if action.option_strings and not unset and not action.required:
                shown = (action.help or "") + str(action.default)
                assert "default" in (action.help or "") or f"(default: {action.default})" in text, (
                    f"{parser.prog} {action.option_strings[0]}: default {action.default!r} not shown ({shown})"
                )


def test_named_gaps_have_text(capsys) -> None:
    assert "--out DIR folder to write model.safetensors" in verb_help(capsys, "export")
    assert "SHARDS field shards to read" in verb_help(capsys, "data", "bench")
    simulate = verb_help(capsys, "simulate")
    for flag in ("--n-traj N_TRAJ", "--n-steps N_STEPS", "--resolution RESOLUTION"):
        assert flag in simulate
    assert simulate.count("(default: the system's") == 3 and "(default: 0)" in simulate
    quickstart = verb_help(capsys, "quickstart")
    for name in stage_names():  # two contain spaces: listed quoted, as a shell needs them
        assert (f'"{name}"' if " " in name else name) in quickstart


def stage_names() -> list[str]:
    from physfm.quickstart.pipeline import STAGES

    return [name for name, _ in STAGES]


@pytest.mark.parametrize(
    "argv",
    [
        ["steer", "rollout", "--ckpt", "c", "--data", "d", "--direction", "f", "--horizon", "0"],
        ["steer", "rollout", "--ckpt", "c", "--data", "d", "--direction", "f", "--horizon", "-2"],
        [
            "steer",
            "rollout",
            "--ckpt",
            "c",
            "--data",
            "d",
            "--direction",
            "f",
            "--max-windows",
            "0",
        ],
        ["rollout", "--ckpt", "c", "--data", "d", "--horizon", "0"],
        ["rollout", "--ckpt", "c", "--data", "d", "--horizon", "1", "--sampling-steps", "0"],
        ["evaluate", "--ckpt", "c", "--data", "d", "--top-k", "0"],
        ["probe", "--ckpt", "c", "--data", "d", "--target", "nu", "--batch-size", "0"],
        ["tokenizer", "encode", "--ckpt", "c", "--data", "d", "--out", "o", "--n-output", "0"],
        ["estimate", "--config", "configs/model/tiny.yaml", "--seq-len", "0"],
        ["simulate", "burgers1d", "--out", "o", "--n-traj", "0"],
    ],
)
def test_a_zero_count_is_refused_before_any_work(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


def test_steer_rollout_refuses_horizon_zero_as_a_library_call(tmp_path: Path) -> None:
    from physfm.interp.steer_rollout import steer_rollout

    for horizon in (0, -2):  # refused before the direction or the model is read
        with pytest.raises(DataError, match=f"--horizon must be >= 1, got {horizon}"):
            steer_rollout(
                tmp_path / "no-run",
                tmp_path / "no-data",
                tmp_path / "no-dir",
                [0.0],
                tmp_path,
                horizon=horizon,
            )


def test_estimate_refuses_seq_len_zero_as_a_library_call() -> None:
    from data_pipelines.config import load_config
    from data_pipelines.errors import InputError
    from physfm.models.trunk import ModelConfig
    from physfm.train.estimate import estimate

    cfg = load_config(ModelConfig, "configs/model/tiny.yaml")
    with pytest.raises(InputError, match="seq-len must be >= 1, got 0"):
        estimate(cfg, 1, 8, seq_len=0)


def test_quickstart_refuses_an_empty_stage_list_instead_of_running_everything(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--stages", ","]) == 2
    assert "--stages: no stage named" in capsys.readouterr().err
    assert not (tmp_path / "qs").exists()
