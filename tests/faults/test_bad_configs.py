"""Case 8: a bad config is one line naming the key, exit 2, before any compute (no run directory).

Every case runs through ``physfm.cli.main`` in-process (fast); one runs as a real process too, to
prove what a user sees: exit status 1, a single stderr line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from physfm.cli import main
from tests.faults.conftest import pretrain_args, run_cli

CASES = {
    "unknown key": (["trainer.max_step=3"], "trainer.max_step"),
    "unknown section": (["optimizer.lr=3"], "optimizer"),
    "wrong type": (["data.batch_size=eight"], "data.batch_size"),
    "bad choice": (["trainer.nonfinite_loss=ignore"], "trainer.nonfinite_loss"),
    "zero-3 under ddp": (["strategy.name=ddp", "strategy.zero_stage=3"], "strategy.zero_stage"),
    "param offload without zero-3": (
        ["strategy.name=deepspeed", "strategy.zero_stage=2", "strategy.offload_params=true"],
        "strategy.offload_params",
    ),
    "missing deepspeed json": (
        ["strategy.name=deepspeed", "strategy.deepspeed_config=nope.json"],
        "strategy.deepspeed_config",
    ),
    "windows longer than the model": (["model.max_frames=2"], "model.max_frames"),
}


def one_error_line(stderr: str, key: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("physfm pretrain: error:") and key in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_override_is_one_line_naming_the_key(
    name: str, tokens: Path, tmp_path: Path, capsys
) -> None:
    overrides, key = CASES[name]
    out = tmp_path / "run"
    assert main(pretrain_args(tokens, out, *overrides)) == 2
    one_error_line(capsys.readouterr().err, key)
    assert not out.exists(), "a run directory was created before the config was checked"


def test_bad_yaml_file_names_the_key_and_the_file(tokens: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    model = Path("configs/model/tiny.yaml").resolve()
    config.write_text(f"model:\n  include: {model}\ntrainer:\n  max_steps: 10\n  keep_last: many\n")
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(config), f"data.tokens=[{tokens}]", f"out={out}"]) == 2
    line = one_error_line(capsys.readouterr().err, "trainer.keep_last")
    assert str(config) in line and not out.exists()


@pytest.mark.slow
def test_a_real_process_exits_2_with_one_line_and_no_traceback(
    tokens: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = run_cli(
        pretrain_args(tokens, out, "strategy.name=ddp", "strategy.zero_stage=3"), timeout=60
    )
    assert result.returncode == 2, result.describe()
    one_error_line(result.stderr, "strategy.zero_stage")
    assert "Traceback" not in result.stdout + result.stderr and not out.exists()
