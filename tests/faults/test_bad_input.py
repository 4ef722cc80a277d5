"""Bad input reaches the user as one line and exit 2, and a refused command leaves nothing behind:
token ids beyond the model's vocabulary (pretrain, probe), a dataset whose dimensionality disagrees
with the tokenizer's record for its name (tokenizer encode/eval, probe), a damaged shard met
mid-encode, and a probe target no window carries (refused before any activation is captured)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.sharding import WindowSpec, shard_datasets
from data_pipelines.synthetic import make_token_shards
from data_pipelines.well_format import Field, WellData
from data_pipelines.well_io import write_well
from physfm.cli import main
from tests import steer_fixtures
from tests.faults.conftest import pretrain_args
from tests.faults.test_corrupt_shards import truncate
from tests.rollout_fixtures import build_tiny_model


def one_error_line(capsys: pytest.CaptureFixture, verb: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"physfm {verb}: error")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shards of a 2D dataset "waves", its tokenizer (2D) and a random model export that uses it."""
    return build_tiny_model(tmp_path_factory.mktemp("bad_input"))


@pytest.fixture(scope="module")
def waves_3d(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Field shards of a 3D dataset under the 2D dataset's name, with its channels."""
    from data_pipelines.shards import read_manifest

    channels = read_manifest(tiny["shards"])["datasets"]["waves"]["channel_names"]
    root = tmp_path_factory.mktemp("waves3d")
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        fields = [
            Field(c, 0, rng.normal(size=(1, 6, 4, 4, 4)).astype(np.float32)) for c in channels
        ]
        data = WellData(
            dataset_name="waves",
            spatial_dims=["x", "y", "z"],
            coords={d: np.linspace(0, 1, 4, dtype=np.float32) for d in "xyz"},
            time=np.arange(6, dtype=np.float32),
            fields=fields,
            simulation_parameters={"speed": 0.3},
        )
        write_well(root / "data" / split / "waves.hdf5", data)
    shards = root / "shards"
    shard_datasets([root], shards, WindowSpec(4, 1, 1))
    assert read_manifest(shards)["datasets"]["waves"]["channel_names"] == channels
    return shards


@pytest.mark.slow
def test_pretrain_refuses_token_ids_beyond_the_vocabulary(tmp_path: Path, capsys) -> None:
    tokens = make_token_shards(tmp_path / "tokens", vocab=64)  # the tiny model has 32 ids
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    rc = main(pretrain_args(tokens, tmp_path / "run", "trainer.max_steps=2", "data.val_batches=0"))
    line = one_error_line(capsys, "pretrain")
    assert rc == 2 and "outside the model's vocabulary [0, 32)" in line, line
    # The failed run put back the signal handlers it found (Ctrl-C works again in this process).
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_probe_refuses_token_ids_beyond_the_vocabulary(tmp_path: Path, capsys, monkeypatch) -> None:
    export = steer_fixtures.export_tiny_model(tmp_path / "m")
    # the tokens', not the model's
    monkeypatch.setattr(steer_fixtures, "VOCAB", 4 * steer_fixtures.VOCAB)
    tokens = steer_fixtures.make_param_tokens(tmp_path / "tokens")
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
        ]
    )
    line = one_error_line(capsys, "probe")
    assert rc == 2 and f"{tokens}: token id" in line and "outside the model's vocabulary" in line, (
        line
    )


def test_probe_refuses_an_unknown_target_before_any_work(tmp_path: Path, capsys) -> None:
    tokens = steer_fixtures.make_param_tokens(tmp_path / "tokens")
    export = steer_fixtures.export_tiny_model(tmp_path / "m")
    out = tmp_path / "p"
    rc = main(
        [
            "probe",
            "--ckpt",
            str(export),
            "--data",
            str(tokens),
            "--target",
            "viscosity",
            "--out",
            str(out),
        ]
    )
    line = one_error_line(capsys, "probe")
    assert (
        rc == 2
        and "no window has the simulation parameter 'viscosity' in split 'valid,test'" in line
    ), line
    assert "(the windows have: drag, nu)" in line
    assert not out.exists()  # no activations captured


@pytest.mark.parametrize("verb", ["encode", "eval"])
def test_tokenizer_refuses_a_dataset_of_other_dimensionality(
    tiny, waves_3d, tmp_path, capsys, verb
) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "tokenizer",
            verb,
            "--ckpt",
            str(tiny["tokenizer"]),
            "--data",
            str(waves_3d),
            "--out",
            str(out),
        ]
    )
    line = one_error_line(capsys, "tokenizer")
    assert (
        rc == 2 and "dataset 'waves' is 3D (grid [4, 4, 4]), the tokenizer codes 2D fields" in line
    ), line
    if verb == "encode":
        assert not out.exists()


def test_probe_refuses_field_shards_of_other_dimensionality(
    tiny, waves_3d, tmp_path, capsys
) -> None:
    out = tmp_path / "p"
    rc = main(
        [
            "probe",
            "--ckpt",
            str(tiny["export"]),
            "--data",
            str(waves_3d),
            "--target",
            "speed",
            "--out",
            str(out),
        ]
    )
    line = one_error_line(capsys, "probe")
    assert rc == 2 and "dataset 'waves' is 3D" in line, line


def test_a_refused_encode_leaves_no_split_folders(tiny, tmp_path: Path, capsys) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(tiny["shards"], shards)
    (test_shard,) = sorted((shards / "test").glob("*.tar"))[:1]
    truncate(test_shard)  # train and valid encode, then the test split fails
    out = tmp_path / "tokens"
    rc = main(
        [
            "tokenizer",
            "encode",
            "--ckpt",
            str(tiny["tokenizer"]),
            "--data",
            str(shards),
            "--out",
            str(out),
        ]
    )
    line = one_error_line(capsys, "tokenizer")
    assert rc == 2 and str(test_shard) in line, line
    assert not out.exists(), sorted(p.relative_to(out) for p in out.rglob("*"))
