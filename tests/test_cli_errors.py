"""The CLI's error contract: an error in the user's input or environment (any PhysfmError) is one
line ``physfm VERB: error: MESSAGE`` with exit code 2; any other exception is a bug and keeps its
traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from data_pipelines.config import ConfigError
from data_pipelines.errors import DataError, InputError, PhysfmError, UnknownNameError
from physfm.cli import UserError, main
from physfm.cli.args import add_split_argument
from physfm.core.errors import CheckpointError
from physfm.interp.selection import SelectionError


def error_lines(err: str, verb: str) -> list[str]:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"physfm {verb}: error: "), err
    return lines


@pytest.mark.parametrize(
    "cls", [DataError, ConfigError, CheckpointError, SelectionError, InputError, UserError]
)
def test_every_user_error_class_derives_from_the_base(cls: type) -> None:
    assert issubclass(cls, PhysfmError)
    if cls is not UserError:
        assert issubclass(cls, ValueError)  # existing `except ValueError` callers keep working


def test_unknown_name_error_is_also_a_key_error_with_a_plain_message() -> None:
    err = UnknownNameError("unknown hook point 'x'")
    assert (
        isinstance(err, KeyError)
        and isinstance(err, PhysfmError)
        and str(err) == "unknown hook point 'x'"
    )


@pytest.mark.parametrize("flag", ["--ckpt", "--from"])
def test_finetune_from_a_missing_checkpoint_is_one_line_and_exit_2(
    flag: str, tmp_path: Path, capsys
) -> None:
    args = [
        "finetune",
        "--config",
        "configs/finetune/tiny.yaml",
        flag,
        "/nonexistent",
        "--data",
        str(tmp_path),
    ]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    (line,) = error_lines(capsys.readouterr().err, "finetune")
    assert "/nonexistent" in line


def test_an_unknown_config_key_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    args = [
        "pretrain",
        "--config",
        "configs/pretrain/tiny.yaml",
        "trainer.max_stepz=3",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    (line,) = error_lines(capsys.readouterr().err, "pretrain")
    assert "trainer.max_stepz" in line and not (tmp_path / "r").exists()


def test_a_bad_model_config_value_is_a_config_error_naming_the_key(tmp_path: Path, capsys) -> None:
    assert main(["estimate", "--config", "configs/model/tiny.yaml", "model.n_head=5"]) == 2
    (line,) = error_lines(capsys.readouterr().err, "estimate")
    assert "n_head" in line


def test_a_bug_keeps_its_traceback(monkeypatch) -> None:
    """A ValueError that is not a PhysfmError is a bug: main lets it through (no one-line mask)."""
    import physfm.cli.export as export

    def broken(args: argparse.Namespace) -> int:
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(export, "run", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["export", "--ckpt", "x", "--out", "y"])


def test_a_multi_line_message_is_printed_on_one_line(monkeypatch, capsys) -> None:
    import physfm.cli.export as export

    def refuse(args: argparse.Namespace) -> int:
        raise DataError("first line\nsecond line")

    monkeypatch.setattr(export, "run", refuse)
    assert main(["export", "--ckpt", "x", "--out", "y"]) == 2
    (line,) = error_lines(capsys.readouterr().err, "export")
    assert line.endswith("first line; second line")


def parse_split(argv: list[str], default: str | None, single: bool = False) -> list[str] | None:
    parser = argparse.ArgumentParser(prog="physfm x")
    add_split_argument(parser, default, single=single)
    return parser.parse_args(argv).split


def test_split_is_a_comma_list_also_accepted_repeated() -> None:
    assert parse_split([], "valid,test") == ["valid", "test"]
    assert parse_split(["--split", "test"], "valid,test") == ["test"]
    assert parse_split(["--split", "train,valid"], "test") == ["train", "valid"]
    assert parse_split(["--split", "train", "--split", "valid", "--split", "train"], "test") == [
        "train",
        "valid",
    ]
    assert parse_split([], None) is None


def test_a_bad_split_and_two_splits_for_a_one_split_verb_are_usage_errors(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_split(["--split", "validation"], "test")
    assert caught.value.code == 2 and "unknown split 'validation'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        parse_split(["--split", "valid,test"], "test", single=True)
    assert caught.value.code == 2 and "reads one split, got valid,test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_split(["--split", "valid", "--split", "test"], "test", single=True)


@pytest.mark.parametrize(
    "verb",
    [
        ["refine"],
        ["rollout"],
        ["evaluate"],
        ["export"],
        ["probe"],
        ["steer", "direction"],
        ["steer", "rollout"],
        ["tokenizer", "eval"],
        ["tokenizer", "encode"],
        ["tokenizer", "decode"],
        ["finetune"],
    ],
)
def test_every_model_input_is_ckpt(verb: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        main([*verb, "--help"])
    assert "--ckpt CKPT" in capsys.readouterr().out
