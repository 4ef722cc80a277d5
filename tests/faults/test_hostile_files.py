"""Case 7: files that carry a pickle payload (or YAML python tags) are refused and nothing executes.

The payload, if ever unpickled, would create a marker file (``exec`` of one line).  Each test checks
the marker is absent after the refusal; ``test_the_payload_is_live`` proves the marker would appear
if the same bytes were loaded the unsafe way, so an absent marker means "refused", not "payload
broken"."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.config import ConfigError, load_config
from data_pipelines.errors import DataError
from physfm.cli import main
from physfm.core.model_config import ModelConfig
from physfm.core.run_info import RunInfo
from tests.faults.conftest import pretrain_args


class Payload:
    """Unpickling this runs ``exec(code)``: the shape of a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return exec, (self.code,)


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-looking checkpoint (a torch zip) whose pickle runs code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {"model.w": torch.zeros(2)},
            "global_step": 4,
            "epoch": 0,
            "loops": Payload(marker),
        },
        path,
    )
    return path


def test_the_payload_is_live(tmp_path: Path, marker: Path) -> None:
    ckpt = hostile_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(ckpt, weights_only=False)  # what an unguarded loader does
    assert marker.exists()


@pytest.mark.slow
def test_lightning_resume_refuses_a_pickle_checkpoint(
    tokens: Path, tmp_path: Path, marker: Path, capsys
) -> None:
    out = tmp_path / "run"
    evil = hostile_checkpoint(out / "checkpoints" / "step=0000004.ckpt", marker)
    code = main(pretrain_args(tokens, out, "trainer.max_steps=8", "trainer.logger=none"))
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    lines = [ln for ln in err.splitlines() if ln.startswith("physfm pretrain: error:")]
    assert len(lines) == 1 and str(evil) in lines[0] and "refused" in lines[0], err


@pytest.mark.parametrize("layout", ["file", "deepspeed_dir"])
def test_export_refuses_a_pickle_checkpoint(
    layout: str, tmp_path: Path, marker: Path, capsys
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    RunInfo(
        kind="ar",
        model=ModelConfig(),
        dataset_names=["toy"],
        n_context_frames=1,
        n_frames=2,
        tokenizer="",
        tokenizer_fingerprint="",
    ).write(run)
    if layout == "file":
        target = hostile_checkpoint(run / "checkpoints" / "step=0000004.ckpt", marker)
    else:  # a ZeRO checkpoint directory: DeepSpeed would unpickle its shards freely
        target = run / "checkpoints" / "step=0000004.ckpt"
        hostile_checkpoint(target / "checkpoint" / "mp_rank_00_model_states.pt", marker)
        (target / "latest").write_text("checkpoint")
        (target / "COMPLETE").write_text("{}")
    assert main(["export", "--ckpt", str(target), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "run pickled code" in err, err
    assert not marker.exists() and not (tmp_path / "export").exists()


def test_tokenizer_checkpoint_with_pickled_weights_is_refused(tmp_path: Path, marker: Path) -> None:
    from tokenizer.checkpoint import CONFIG, WEIGHTS, load_tokenizer, save_tokenizer
    from tokenizer.model import DatasetSpec, Tokenizer, TokenizerConfig

    ckpt = save_tokenizer(
        Tokenizer(TokenizerConfig(), {"toy": DatasetSpec(channel_names=["u"])}), tmp_path / "tok"
    )
    assert (ckpt / CONFIG).is_file()
    hostile_checkpoint(ckpt / WEIGHTS, marker)  # the weights file replaced by a pickle
    with pytest.raises(DataError, match=WEIGHTS):
        load_tokenizer(ckpt)
    assert not marker.exists()


def object_array_member(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def replace_member(shard: Path, member_suffix: str, data: bytes) -> str:
    """Rewrite ``shard`` with the first member ending in ``member_suffix`` replaced; returns its
    name."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    name = next(m.name for m, _ in members if m.name.endswith(member_suffix))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, content in members:
            content = data if info.name == name else content
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return name


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_shard_member_with_an_object_array_is_refused(
    on_error: str, tokens: Path, tmp_path: Path, marker: Path
) -> None:
    from data_pipelines.loader import make_loader

    copy = tmp_path / "tokens"
    shutil.copytree(tokens, copy)
    shard = copy / "valid" / "shard-000000.tar"
    name = replace_member(shard, "tokens.npy", object_array_member(marker))
    loader = make_loader(
        str(copy), "valid", 2, shuffle=False, keys=("tokens",), normalize=False, on_error=on_error
    )
    if on_error == "raise":
        with pytest.raises(DataError, match=rf"{shard}.*{name}"):
            list(loader)
    else:  # refused, skipped and counted
        batches = list(loader)
        assert batches and batches[-1]["skipped_samples"] >= 1
    assert not marker.exists()


def test_yaml_with_python_tags_is_refused(
    tokens: Path, tmp_path: Path, marker: Path, capsys
) -> None:
    from physfm.train.config import PretrainConfig

    evil = tmp_path / "evil.yaml"
    evil.write_text(
        f"seed: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').close()\"]\n"
    )
    with pytest.raises(ConfigError, match="not a safe YAML config"):
        load_config(PretrainConfig, evil)
    included = tmp_path / "includes_evil.yaml"
    included.write_text(f"model:\n  include: {evil}\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(PretrainConfig, included)
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(evil), f"out={out}"]) == 2
    assert "not a safe YAML config" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_stats_yaml_with_python_tags_is_refused(
    toy_dataset: Path, tmp_path: Path, marker: Path, capsys
) -> None:
    (toy_dataset / "stats.yaml").write_text(
        f"mean: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').close()\"]\n"
    )
    out = tmp_path / "shards"
    assert main(["data", "shard", str(toy_dataset), "--out", str(out), "--workers", "1"]) == 2
    assert "stats.yaml" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()
    assert not list(tmp_path.glob(".shards*"))  # no staging directory left behind


@pytest.mark.slow
def test_a_bad_member_read_in_a_loader_worker_reaches_the_user_as_one_line(
    tokens: Path, tmp_path: Path, marker: Path, capsys
) -> None:
    """The DataError raised inside a DataLoader worker reaches the main process as itself (not
    wrapped in torch's worker traceback), so ``physfm data bench`` prints one line naming the shard
    and member."""
    from data_pipelines.loader import make_loader

    copy = tmp_path / "tokens"
    shutil.copytree(tokens, copy)
    shard = copy / "train" / "shard-000000.tar"
    name = replace_member(shard, "tokens.npy", object_array_member(marker))
    loader = make_loader(
        str(copy), "train", 2, num_workers=1, shuffle=False, keys=("tokens",), normalize=False
    )
    with pytest.raises(DataError) as caught:
        list(loader)
    assert str(shard) in str(caught.value) and name in str(caught.value)
    assert "Traceback" not in str(caught.value) and "worker" not in str(caught.value), caught.value

    assert not marker.exists()


@pytest.mark.slow
def test_data_bench_on_a_shard_with_a_pickled_member_prints_one_line(
    toy_dataset: Path, tmp_path: Path, marker: Path, capsys
) -> None:
    shards = tmp_path / "shards"
    assert main(["data", "shard", str(toy_dataset), "--out", str(shards), "--workers", "1"]) == 0
    # every train shard: the bench reads any of them
    for shard in sorted((shards / "train").glob("*.tar")):
        replace_member(shard, ".npy", object_array_member(marker))
    capsys.readouterr()
    assert main(["data", "bench", str(shards), "--workers", "1", "--seconds", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("physfm data: error:") and str(shards / "train") in err, err
    assert not marker.exists()
