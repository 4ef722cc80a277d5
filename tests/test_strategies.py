"""The launch layer: config validation, Trainer kwargs, and real 2-rank gloo training of a toy MLP
with ddp and CPUDeepSpeedStrategy (ZeRO-2, ZeRO-3, bf16, offload): losses, checkpoints, resume,
export.

The distributed cases launch ``tests/strategies_worker.py`` through
``tests/harness.run_distributed`` and assert on what the workers wrote.  Each run happens once per
module (cached) and is shared by the tests that read it.  First DeepSpeed CPU use compiles ops
(shm_comm ~27 s, cpu_adam ~45–180 s), cached in ~/.cache/torch_extensions.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from data_pipelines.config import ConfigError, from_dict, load_config
from physfm.core.checkpoint import (
    consolidate_state_dict,
    export_safetensors,
    find_latest_checkpoint,
    is_complete,
    list_checkpoints,
    load_safetensors,
)
from physfm.train.launch import build_trainer_kwargs
from physfm.train.op_builds import build_dir
from physfm.train.strategies import (
    DEEPSPEED_CONFIG_DIR,
    StrategyConfig,
    apply_activation_checkpointing,
    build_deepspeed_config,
    return_freed_memory_to_os,
    uses_cpu_adam,
)
from tests.harness import run_distributed

WORKER = Path(__file__).with_name("strategies_worker.py")
# 6 steps per epoch in the worker: the mid-run checkpoint is an epoch boundary
STEPS, CKPT_EVERY = 12, 6


# ----------------------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    ("fields", "key"),
    [
        # ZeRO-3 with a strategy without it
        ({"name": "ddp", "zero_stage": 3}, "strategy.zero_stage"),
        ({"name": "auto", "offload_optimizer": True}, "strategy.offload_optimizer"),
        ({"name": "ddp", "offload_params": True}, "strategy.offload_params"),
        (
            {"name": "single", "deepspeed_config": "configs/deepspeed/zero2.json"},
            "strategy.deepspeed_config",
        ),
        ({"name": "deepspeed", "zero_stage": 2, "offload_params": True}, "strategy.offload_params"),
        (
            {"name": "deepspeed", "zero_stage": 0, "offload_optimizer": True},
            "strategy.offload_optimizer",
        ),
        ({"name": "deepspeed", "zero_stage": 5}, "strategy.zero_stage"),
        (
            {"name": "deepspeed", "deepspeed_config": "configs/deepspeed/nope.json"},
            "strategy.deepspeed_config",
        ),
        ({"name": "single", "devices": 2}, "strategy.devices"),
        ({"devices": "many"}, "strategy.devices"),
        ({"num_nodes": 0}, "strategy.num_nodes"),
        ({"accelerator": "cpu", "process_group_backend": "nccl"}, "strategy.process_group_backend"),
    ],
)
def test_impossible_combinations_name_the_key(fields: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(StrategyConfig, fields, "strategy")


def test_yaml_config_loads_and_bad_type_names_key(tmp_path: Path) -> None:
    path = tmp_path / "strategy.yaml"
    path.write_text("name: deepspeed\nzero_stage: 3\noffload_params: true\n")
    cfg = load_config(StrategyConfig, path)
    assert (cfg.name, cfg.resolved_zero_stage(), cfg.offload_params) == ("deepspeed", 3, True)
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(StrategyConfig, path, ["zero_stage=two"])
    with pytest.raises(ConfigError, match="unknown config key stage"):
        load_config(StrategyConfig, path, ["stage=2"])


@pytest.mark.parametrize("json_name", ["zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"])
def test_stock_deepspeed_jsons(json_name: str) -> None:
    cfg = StrategyConfig(name="deepspeed", deepspeed_config=f"configs/deepspeed/{json_name}.json")
    cfg.validate()
    ds = build_deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == int(json_name[4])
    # "auto" → Lightning fills
    assert "auto" not in json.dumps(ds) and not any(k.startswith("_") for k in ds)
    # Lightning refuses it: it comes from the Trainer
    assert "gradient_accumulation_steps" not in ds
    # configure_optimizers supplies it (torch AdamW or DeepSpeedCPUAdam)
    assert "optimizer" not in ds
    assert uses_cpu_adam(cfg) == json_name.endswith("offload")


def test_deepspeed_overrides_and_default_json() -> None:
    cfg = StrategyConfig(
        name="deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True
    )
    assert cfg.deepspeed_config_path() == DEEPSPEED_CONFIG_DIR / "zero3_offload.json"
    ds = build_deepspeed_config(
        StrategyConfig(
            name="deepspeed",
            deepspeed_config="configs/deepspeed/zero2.json",
            zero_stage=1,
            offload_optimizer=True,
        )
    )
    assert ds["zero_optimization"]["stage"] == 1
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert StrategyConfig(name="deepspeed").resolved_zero_stage() == 2  # default


def test_trainer_kwargs_on_cpu() -> None:
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    single = build_trainer_kwargs(StrategyConfig(name="single", accelerator="cpu"))
    assert (single["strategy"], single["devices"], single["num_nodes"]) == ("auto", 1, 1)
    assert single["precision"] == "32-true"  # auto precision on CPU
    ddp = build_trainer_kwargs(
        StrategyConfig(name="ddp", accelerator="cpu", devices=2, precision="bf16-mixed")
    )
    assert (
        isinstance(ddp["strategy"], DDPStrategy) and ddp["strategy"].process_group_backend == "gloo"
    )
    assert (ddp["devices"], ddp["precision"]) == (2, "bf16-mixed")
    ds = build_trainer_kwargs(StrategyConfig(name="deepspeed", zero_stage=3, accelerator="cpu"))
    assert (
        isinstance(ds["strategy"], DeepSpeedStrategy)
        and type(ds["strategy"]).__name__ == "CPUDeepSpeedStrategy"
    )
    assert ds["strategy"].zero_stage_3 and ds["strategy"].process_group_backend == "gloo"


def test_slurm_environment_is_lightnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under srun, Lightning's own SLURMEnvironment supplies ranks; devices/num_nodes "auto" follow
    SLURM."""
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    # Building a Trainer as rank 3 sets Lightning's process-global rank; restore it for later tests.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    monkeypatch.setattr(fabric_rank_zero, "rank", fabric_rank_zero.rank)
    for var in (
        "TORCHELASTIC_RUN_ID",
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
    ):
        monkeypatch.delenv(var, raising=False)
    slurm = {
        "SLURM_NTASKS": "4",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NAME": "pretrain",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_JOB_ID": "77",
        "SLURM_NODELIST": "node[1-2]",
    }
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    kwargs = build_trainer_kwargs(StrategyConfig(name="ddp", accelerator="cpu"))
    assert (kwargs["devices"], kwargs["num_nodes"]) == (2, 2)
    trainer = L.Trainer(
        **kwargs, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (
        3,
        1,
        1,
        4,
    )


def test_activation_checkpointing_keeps_grads_and_keys() -> None:
    from torch import nn

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    wrapped = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    wrapped.load_state_dict(plain.state_dict())
    assert apply_activation_checkpointing(wrapped, (nn.Linear,)) == 2
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 8)
    plain(x).sum().backward()
    wrapped(x).sum().backward()
    for a, b in zip(plain.parameters(), wrapped.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


# ----------------------------------------------------------------------------- 2-rank training
RUNS: dict[str, tuple[dict, list[str]]] = {
    "ddp": ({"name": "ddp", "accelerator": "cpu"}, ["--ckpt-every", str(CKPT_EVERY)]),
    "zero2": (
        {"name": "deepspeed", "zero_stage": 2, "accelerator": "cpu"},
        ["--ckpt-every", str(CKPT_EVERY)],
    ),
    "zero3": (
        {"name": "deepspeed", "zero_stage": 3, "accelerator": "cpu"},
        ["--ckpt-every", str(CKPT_EVERY)],
    ),
    "zero2_bf16": (
        {"name": "deepspeed", "zero_stage": 2, "accelerator": "cpu", "precision": "bf16-mixed"},
        [],
    ),
    # optimizer + parameter offload (DeepSpeedCPUAdam) and activation checkpointing, all at once
    "zero3_offload": (
        {
            "name": "deepspeed",
            "zero_stage": 3,
            "accelerator": "cpu",
            "offload_optimizer": True,
            "offload_params": True,
            "activation_checkpointing": True,
        },
        [],
    ),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``run("zero3")`` → the output dir of that 2-rank training (launched once per module);
    ``run("zero3:resumed")`` resumes it from its mid-run checkpoint; ``run("zero3:validate")``
    evaluates its final checkpoint with a fresh Trainer."""
    done: dict[str, Path] = {}

    def launch(name: str) -> Path:
        if name not in done:
            base, _, variant = name.partition(":")
            strategy, extra = RUNS[base]
            out = tmp_path_factory.mktemp(name.replace(":", "_"))
            if variant == "resumed":  # continue the uninterrupted run from its mid-run checkpoint
                ckpt = launch(base) / "ckpt" / f"step={CKPT_EVERY}.ckpt"
                extra = ["--resume", str(ckpt), "--ckpt-dir", str(out / "ckpt")]
            # a fresh Trainer evaluating the final checkpoint, outside fit
            elif variant == "validate":
                extra = ["--validate", str(launch(base) / "ckpt" / f"step={STEPS}.ckpt")]
            result = run_distributed(
                [
                    str(WORKER),
                    "--strategy",
                    json.dumps(strategy),
                    "--out",
                    str(out),
                    "--steps",
                    str(STEPS),
                    *extra,
                ],
                nproc=2,
                timeout=400,
            )
            assert result.ok, result.describe()
            assert "terminate called" not in result.stderr, result.describe()
            (out / "worker_output.txt").write_text(result.stdout + result.stderr)
            done[name] = out
        return done[name]

    return launch


def losses(out: Path) -> dict[int, dict[int, float]]:
    """{rank: {step: loss}} as the workers wrote them."""
    per_rank = {}
    for rank in (0, 1):
        record = json.loads((out / f"losses_rank{rank}.json").read_text())
        assert record["world_size"] == 2 and record["global_step"] == STEPS
        per_rank[rank] = {int(step): loss for step, loss in record["losses"].items()}
    return per_rank


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "final.safetensors"))


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_trains_and_checkpoints(run: Callable[[str], Path]) -> None:
    out = run("ddp")
    per_rank = losses(out)
    for rank_losses in per_rank.values():
        assert sorted(rank_losses) == list(range(1, STEPS + 1))
        first, last = [rank_losses[s] for s in (1, 2, 3)], [rank_losses[s] for s in (10, 11, 12)]
        assert sum(last) < 0.6 * sum(first), rank_losses  # loss decreases
    assert per_rank[0] != per_rank[1]  # the sampler gave the ranks different data
    ckpts = list_checkpoints(out / "ckpt")
    assert [p.name for p in ckpts] == [f"step={CKPT_EVERY}.ckpt", f"step={STEPS}.ckpt"]
    assert all(p.is_file() and is_complete(p) for p in ckpts)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_zero_losses_equal_ddp(run: Callable[[str], Path], name: str) -> None:
    ddp, zero = losses(run("ddp")), losses(run(name))
    record = json.loads((run(name) / "losses_rank0.json").read_text())
    assert record["strategy"] == "CPUDeepSpeedStrategy"
    for rank in (0, 1):
        for step in range(1, STEPS + 1):
            assert zero[rank][step] == pytest.approx(ddp[rank][step], rel=1e-5, abs=1e-7), (
                rank,
                step,
            )
    ckpt = find_latest_checkpoint(run(name) / "ckpt")
    assert ckpt is not None and ckpt.name == f"step={STEPS}.ckpt" and ckpt.is_dir()
    shards = sorted(p.name for p in (ckpt / "checkpoint").glob("*optim_states.pt"))
    assert len(shards) == 2  # one optimizer shard per rank: the state really was partitioned


def test_freed_memory_goes_back_to_the_os() -> None:
    """What a rank frees after DeepSpeed partitions its model leaves the process's resident
    memory."""

    def rss() -> int:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) * 1024

    # 64 KB each: heap memory, not separate mappings
    kept = [torch.ones(16_000) for _ in range(4000)]
    held = rss()
    del kept
    assert return_freed_memory_to_os()
    assert rss() < held - 100 * 2**20  # ~250 MB freed; at least 100 MB of it back to the OS


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_checkpoints_report_their_write_and_read_seconds(
    run: Callable[[str], Path],
) -> None:
    written = (run("zero3") / "worker_output.txt").read_text()
    assert re.search(
        r"physfm: checkpoint \S+step=\d+\.ckpt written in [\d.]+ s \([\d.]+ GiB, 2 ranks\)", written
    )
    read = (run("zero3:resumed") / "worker_output.txt").read_text()
    assert re.search(rf"physfm: checkpoint \S+step={CKPT_EVERY}\.ckpt loaded in [\d.]+ s", read), (
        read[-2000:]
    )


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3"])
def test_resume_matches_uninterrupted(run: Callable[[str], Path], name: str) -> None:
    whole, resumed = losses(run(name)), losses(run(f"{name}:resumed"))
    for rank in (0, 1):
        # continued, not restarted
        assert sorted(resumed[rank]) == list(range(CKPT_EVERY + 1, STEPS + 1))
        for step in resumed[rank]:
            assert resumed[rank][step] == whole[rank][step], (rank, step)  # bit for bit on CPU
    a, b = final_weights(run(name)), final_weights(run(f"{name}:resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3"])
def test_checkpoint_consolidates_to_safetensors(
    run: Callable[[str], Path], name: str, tmp_path: Path
) -> None:
    ckpt = find_latest_checkpoint(run(name) / "ckpt")
    state = consolidate_state_dict(ckpt, strip_prefix="net.")
    export_safetensors(state, {"model": "toy-mlp", "d_in": 16}, tmp_path / "export")
    loaded, config = load_safetensors(tmp_path / "export")
    assert config == {"model": "toy-mlp", "d_in": 16}
    # rank 0's weights at the end of training (gathered under ZeRO-3)
    expected = final_weights(run(name))
    assert sorted(loaded) == sorted(expected)
    for key in expected:
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], expected[key]), key
    ddp = final_weights(run("ddp"))  # ZeRO shards merge to the same model DDP trained
    assert all(torch.allclose(loaded[k], ddp[k], rtol=1e-5, atol=1e-6) for k in ddp)


@pytest.mark.slow
@pytest.mark.distributed
def test_validate_zero3_checkpoint_outside_fit(run: Callable[[str], Path]) -> None:
    """trainer.validate(ckpt_path=ZeRO-3 dir) restores the full weights (DeepSpeed alone cannot:
    #7272)."""
    from torch import nn

    from tests.strategies_worker import BATCH_SIZE, D_HIDDEN, D_IN, D_OUT, make_dataset

    out = run("zero3:validate")
    net = nn.Sequential(nn.Linear(D_IN, D_HIDDEN), nn.Tanh(), nn.Linear(D_HIDDEN, D_OUT))
    net.load_state_dict(final_weights(run("zero3")))
    x, y = make_dataset().tensors
    for rank in (0, 1):
        reported = json.loads((out / f"val_rank{rank}.json").read_text())
        xs, ys = x[rank::2], y[rank::2]  # DistributedSampler without shuffling
        with torch.no_grad():
            expected = [
                nn.functional.mse_loss(net(xs[i : i + BATCH_SIZE]), ys[i : i + BATCH_SIZE]).item()
                for i in range(0, len(xs), BATCH_SIZE)
            ]
        assert [reported[str(i)] for i in range(len(expected))] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
@pytest.mark.distributed
def test_bf16_mixed_tracks_fp32(run: Callable[[str], Path]) -> None:
    ddp, bf16 = losses(run("ddp")), losses(run("zero2_bf16"))
    record = json.loads((run("zero2_bf16") / "losses_rank0.json").read_text())
    assert record["precision"] == "bf16-mixed"
    deltas = [abs(bf16[r][s] - ddp[r][s]) / ddp[r][s] for r in (0, 1) for s in range(1, STEPS + 1)]
    assert max(deltas) < 0.03  # bf16 rounding, same trajectory
    assert max(deltas) > 0  # and it really ran in bf16


@pytest.mark.slow
@pytest.mark.distributed
def test_offload_with_activation_checkpointing_equals_ddp(run: Callable[[str], Path]) -> None:
    ddp, offload = losses(run("ddp")), losses(run("zero3_offload"))
    for rank in (0, 1):
        for step in range(1, STEPS + 1):
            # DeepSpeedCPUAdam is the same AdamW maths as torch's, in a different summation order
            assert offload[rank][step] == pytest.approx(ddp[rank][step], rel=1e-4), (rank, step)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_build_killed_midway_does_not_hang_the_next_run(
    run: Callable[[str], Path], tmp_path: Path
) -> None:
    """A build killed part-way leaves torch's ``lock`` file in the op's build directory, and
    DeepSpeed alone then waits on it forever, printing nothing (CI once timed out so, after a
    killed run had left one in the shared cache).  The strategy removes a lock no process holds."""
    plain = run("zero3_offload")  # has built both ops in the default cache
    # a copy of that cache (mtimes kept: nothing rebuilds) with a dead build's lock in each op
    extensions = tmp_path / "torch_extensions"
    for name in ("deepspeed_shm_comm", "cpu_adam"):
        shutil.copytree(build_dir(name), extensions / name)
        (extensions / name / "lock").touch()
    strategy, _ = RUNS["zero3_offload"]
    out = tmp_path / "out"
    result = run_distributed(
        [str(WORKER), "--strategy", json.dumps(strategy), "--out", str(out), "--steps", str(STEPS)],
        nproc=2,
        timeout=400,
        env={"TORCH_EXTENSIONS_DIR": str(extensions)},
    )
    assert result.ok, result.describe()
    for name in ("deepspeed_shm_comm", "cpu_adam"):
        assert not (extensions / name / "lock").exists()
        assert (
            f"removed {extensions / name / 'lock'}: the lock of a build that died" in result.stderr
        )
    assert losses(out) == losses(plain)


@pytest.mark.slow
@pytest.mark.distributed
def test_harness_timeout_kills_workers(tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text(
        "import os, time, pathlib\n"
        "pathlib.Path(os.environ['OUT'], os.environ['RANK']).write_text(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )
    result = run_distributed([str(script)], nproc=2, timeout=8, env={"OUT": str(tmp_path)})
    assert result.timed_out and not result.ok
    pids = [int((tmp_path / r).read_text()) for r in ("0", "1")]  # both workers started...
    for pid in pids:  # ...and are gone
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
