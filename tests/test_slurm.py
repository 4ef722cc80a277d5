"""The Slurm scripts on a real Slurm cluster started on this host (scripts/slurm/local_cluster.sh).

One fake two-node cluster (n1, n2) serves every test: 1 node x 2 tasks (DeepSpeed ZeRO-2) and 2
nodes x 1 task (ddp), in CPU mode (PHYSFM_DEVICE=cpu, gloo).  Outcomes are read from the job's own
state (`scontrol show job` and the jobcomp log), never only from an exit code, and from what the
runs wrote.

Where Slurm cannot start: as root or with CI=true the tests fail loudly; a developer run without
root skips them with the reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.datagen import TINY_PRETRAIN as TINY
from tests.harness import REPO_ROOT, worker_env

SLURM_DIR = REPO_ROOT / "scripts" / "slurm"
LOCAL_CLUSTER = SLURM_DIR / "local_cluster.sh"
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


# ----------------------------------------------------------------------------- the cluster
@dataclass
class Cluster:
    base: Path

    @property
    def jobcomp_log(self) -> Path:
        return self.base / "log" / "jobcomp.log"

    def jobcomp_size(self) -> int:
        return self.jobcomp_log.stat().st_size if self.jobcomp_log.exists() else 0


def _cluster(
    action: str, *args: str, base: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LOCAL_CLUSTER), action, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SLURM_BASE": str(base)},
    )


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    base = Path(os.environ.get("SLURM_BASE", "/tmp/physfm-slurm"))
    status = _cluster("status", base=base)
    already_up = status.returncode == 0 and "nodes: 2" in status.stdout
    start = _cluster("start", "--nodes", "2", base=base)
    if start.returncode != 0:
        why = f"local Slurm cluster did not start (exit {start.returncode}):\n{start.stdout}{start.stderr}"
        if os.geteuid() == 0 or os.environ.get("CI") == "true":
            pytest.fail(f"{why}\nAs root / in CI the Slurm tests must run.", pytrace=False)
        print(f"\nskipping Slurm tests: {why}", file=sys.stderr)
        pytest.skip(why)
    yield Cluster(base)
    if not already_up:  # leave a cluster someone else started alone
        _cluster("stop", base=base)


# ----------------------------------------------------------------------------- jobs
def job_env(**extra: str) -> dict[str, str]:
    """The environment sbatch hands to the job: the repo's interpreter as `physfm`, CPU mode."""
    return worker_env(
        {"PHYSFM": f"{sys.executable} -m physfm.cli", "PHYSFM_DEVICE": "cpu", **extra}
    )


def sbatch(
    script: str, *args: str, options: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> int:
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={REPO_ROOT}", *options, str(SLURM_DIR / script), *args],
        capture_output=True,
        text=True,
        env=env or job_env(),
        timeout=30,
    )
    assert proc.returncode == 0, f"sbatch {script} failed: {proc.stderr}"
    return int(proc.stdout.strip().split(";")[0])


def job_records(job_id: int) -> list[dict[str, str]]:
    """`scontrol show job -o` as dicts (one per array task); empty once the job has aged out."""
    proc = subprocess.run(
        ["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        return []
    return [
        dict(re.findall(r"(\w+)=(\S*)", line)) for line in proc.stdout.splitlines() if line.strip()
    ]


def wait_for_job(job_id: int, timeout: float, log: Path | None = None) -> list[dict[str, str]]:
    """Poll until every task of the job is in a terminal state; on timeout cancel it and fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = job_records(job_id)
        if records and all(r.get("JobState") in TERMINAL for r in records):
            return records
        time.sleep(0.5)
    subprocess.run(["scancel", str(job_id)], timeout=30)
    pytest.fail(
        f"job {job_id} not finished after {timeout:.0f}s: {job_records(job_id)}\n{tail(log)}"
    )


def jobcomp_lines(cluster: Cluster, job_id: int, since: int = 0) -> list[dict[str, str]]:
    """The jobcomp log's lines for a job, oldest first (a requeued job has one per attempt), from
    byte offset ``since`` on (job ids restart if someone wipes the cluster's state but keeps its
    logs)."""
    with cluster.jobcomp_log.open("rb") as fh:
        fh.seek(since)
        lines = fh.read().decode(errors="replace").splitlines()
    return [
        dict(re.findall(r"(\w+)=(\S*)", ln))
        for ln in lines
        if re.search(rf"\bJobId={job_id}\b", ln)
    ]


def tail(log: Path | None, n: int = 40) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def assert_completed(cluster: Cluster, job_id: int, log: Path | None = None) -> dict[str, str]:
    """The job's own record says COMPLETED with exit code 0:0, in scontrol and in the jobcomp
    log."""
    (record,) = job_records(job_id)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), (
        f"{record}\n{tail(log)}"
    )
    lines = jobcomp_lines(cluster, job_id)
    assert lines, f"job {job_id} is missing from {cluster.jobcomp_log}"
    assert (lines[-1]["JobState"], lines[-1]["ExitCode"]) == ("COMPLETED", "0:0"), lines[-1]
    return record


def pretrain_args(tokens: Path, *extra: str) -> list[str]:
    return [
        "--config",
        "configs/pretrain/tiny.yaml",
        *TINY,
        f"data.tokens=[{tokens}]",
        "trainer.val_every=0",
        *extra,
    ]


def submit_pretrain(
    tmp_path: Path, nodes: int, tasks_per_node: int, *args: str
) -> tuple[int, Path, Path]:
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(
        "pretrain.sbatch",
        *args,
        env=job_env(RUN_DIR=str(run_dir)),
        options=(
            f"--nodes={nodes}",
            f"--ntasks-per-node={tasks_per_node}",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--time=10",
            f"--output={log}",
        ),
    )
    return job, run_dir, log


def check_trained(run_dir: Path, steps: int) -> dict:
    """Loss fell and the final checkpoint is complete."""
    from physfm.core.checkpoint import find_latest_checkpoint

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == steps
    history = [loss for _, loss in metrics["loss_history"]]
    assert len(history) >= 4 and sum(history[-2:]) < 0.85 * sum(history[:2]), history
    latest = find_latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None and latest.name == f"step={steps:07d}.ckpt"
    return metrics


# ----------------------------------------------------------------------------- pretraining
@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.parametrize(
    "nodes,tasks_per_node,strategy",
    [
        pytest.param(
            1, 2, ["strategy.name=deepspeed", "strategy.zero_stage=2"], id="1node-2tasks-zero2"
        ),
        pytest.param(2, 1, ["strategy.name=ddp"], id="2nodes-1task-ddp"),
    ],
)
def test_pretrain_sbatch_completes_and_learns(
    cluster, tokens, tmp_path, nodes, tasks_per_node, strategy
):
    job, run_dir, log = submit_pretrain(
        tmp_path,
        nodes,
        tasks_per_node,
        *pretrain_args(
            tokens,
            "trainer.max_steps=40",
            "trainer.checkpoint_every=20",
            "trainer.log_every=5",
            "optim.lr=3e-3",
            *strategy,
        ),
    )
    wait_for_job(job, timeout=150, log=log)
    record = assert_completed(cluster, job, log)
    assert record["NumNodes"] == str(nodes) and record["NumTasks"] == str(nodes * tasks_per_node)
    text = log.read_text()
    assert f"on {nodes} node(s) x {tasks_per_node} task(s), device=cpu" in text
    assert re.search(r"^1: ", text, re.M), "rank 1 wrote nothing: the job did not run 2 ranks"
    assert "MEMBER: 2/2" in text  # Lightning / DeepSpeed saw a world of two ranks
    assert "physfm launch: pretrain exited with code 0" in text
    check_trained(run_dir, steps=40)
    # ZeRO checkpoints are directories with one shard per rank
    if "strategy.name=deepspeed" in strategy:
        assert (
            len(list((run_dir / "checkpoints" / "step=0000040.ckpt").rglob("*optim_states.pt")))
            == 2
        )


@pytest.mark.slow
@pytest.mark.slurm
def test_sigusr1_checkpoints_requeues_and_resumes(cluster, tokens, tmp_path):
    jobcomp_start = cluster.jobcomp_size()
    job, run_dir, log = submit_pretrain(
        tmp_path,
        2,
        1,
        *pretrain_args(
            tokens,
            "trainer.max_steps=200",
            "trainer.checkpoint_every=10",
            "trainer.keep_last=30",
            "trainer.log_every=5",
            "optim.lr=3e-3",
            "strategy.name=ddp",
            # A loader worker process per rank: Slurm signals it too, and it must survive.
            "data.num_workers=1",
        ),
    )
    deadline = time.monotonic() + 120
    # training (and its handler) is up
    while not list((run_dir / "checkpoints").glob("step=*.ckpt")):
        state = (job_records(job) or [{}])[0].get("JobState")
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), (
            f"job {job} is {state} before training\n{tail(log)}"
        )
        assert time.monotonic() < deadline, f"no checkpoint after 120 s\n{tail(log)}"
        time.sleep(0.2)
    # What `#SBATCH --signal=USR1@90` does near the time limit: SIGUSR1 to every task of the job's
    # steps (not to the batch shell, which must survive to requeue).
    subprocess.run(["scancel", "--signal=USR1", str(job)], check=True, timeout=30)
    wait_for_job(job, timeout=150, log=log)
    record = assert_completed(cluster, job, log)
    assert record["Restarts"] == "1"
    attempts = jobcomp_lines(cluster, job, since=jobcomp_start)
    assert len(attempts) == 2, attempts  # the requeued attempt and the final one

    text = log.read_text()  # --open-mode=append: both attempts
    stopped = re.search(r"stopping after step (\d+)", text)
    assert stopped, tail(log)
    step = int(stopped.group(1))
    assert 10 <= step < 200
    assert f"requeueing job {job}" in text and "(restart 1)" in text
    ckpt = f"step={step:07d}.ckpt"
    assert re.search(rf"resuming from \S+/{re.escape(ckpt)} \(step {step}\)", text), tail(log)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 200 and metrics["stopped_at_step"] is None
    assert metrics["resumed_from"] == str(run_dir / "checkpoints" / ckpt)
    logged = [s for s, _ in metrics["loss_history"]]
    assert logged == sorted(set(logged)), logged  # no step trained twice
    after = [s for s in logged if s > step]
    assert after and after[0] <= step + 5, logged  # logging went on right after the resume point
    assert (run_dir / "checkpoints" / ckpt).is_file() and (
        run_dir / "checkpoints" / "step=0000200.ckpt"
    ).is_file()


@pytest.mark.slow
@pytest.mark.slurm
def test_sigterm_to_the_tasks_checkpoints_and_fails_the_job(cluster, tokens, tmp_path):
    """SIGTERM to every task of the job's steps (`scancel --signal=TERM`, a preemption's grace
    signal): the run saves after its step and exits 143; the job ends FAILED with 143, never
    COMPLETED, and the log says how to resume.  (At a hard time limit srun itself gets SIGTERM and
    SIGKILLs the tasks: launch.sh says so, and the USR1@90 lead is what checkpoints ahead of the
    limit.)"""
    job, run_dir, log = submit_pretrain(
        tmp_path,
        2,
        1,
        *pretrain_args(
            tokens,
            "trainer.max_steps=400",
            "trainer.checkpoint_every=10",
            "trainer.keep_last=50",
            "strategy.name=ddp",
        ),
    )
    deadline = time.monotonic() + 120
    # training (and its handler) is up
    while not list((run_dir / "checkpoints").glob("step=*.ckpt")):
        state = (job_records(job) or [{}])[0].get("JobState")
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), (
            f"job {job} is {state} before training\n{tail(log)}"
        )
        assert time.monotonic() < deadline, f"no checkpoint after 120 s\n{tail(log)}"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=TERM", str(job)], check=True, timeout=30)
    (record,) = wait_for_job(job, timeout=120, log=log)
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "143:0"), f"{record}\n{tail(log)}"
    assert record["Restarts"] == "0"  # only SIGUSR1 requeues
    text = log.read_text()
    stopped = re.search(r"signal SIGTERM received: stopping after step (\d+)", text)
    assert stopped, tail(log)
    step = int(stopped.group(1))
    assert (
        "physfm launch: pretrain stopped by SIGTERM (time limit or preemption) with exit code 143"
        in text
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["stopped_at_step"], metrics["stopped_by"]) == (step, "SIGTERM")
    assert (run_dir / "checkpoints" / f"step={step:07d}.ckpt").is_file()


# ----------------------------------------------------------------------------- array sharding
@pytest.mark.slow
@pytest.mark.slurm
def test_array_sharding_matches_a_single_run(cluster, tmp_path):
    from data_pipelines.sharding import shard_datasets
    from data_pipelines.shards import read_manifest
    from tests.datagen import make_toy_dataset

    # Two identical datasets (same seed), neither with stats.yaml: the Slurm chain computes its own.
    dataset, reference = make_toy_dataset(tmp_path / "toy"), make_toy_dataset(tmp_path / "toy_ref")
    shard_datasets([reference], tmp_path / "single", max_shard_mb=0.05)
    out = tmp_path / "shards"
    env = job_env(
        SHARD_SBATCH_ARGS=f"--output={tmp_path}/%x-%j.out --cpus-per-task=1 --chdir={REPO_ROOT}"
    )
    proc = subprocess.run(
        [
            "bash",
            str(SLURM_DIR / "shard.sh"),
            "--parts",
            "3",
            str(dataset),
            "--out",
            str(out),
            "--max-shard-mb",
            "0.05",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    ids = dict(re.findall(r"^(\w+_job)=(\d+)$", proc.stdout, re.M))
    assert set(ids) == {"stats_job", "array_job", "merge_job"}, proc.stdout
    wait_for_job(int(ids["merge_job"]), timeout=120)
    tasks = job_records(int(ids["array_job"]))
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1", "2"]
    assert all((t["JobState"], t["ExitCode"]) == ("COMPLETED", "0:0") for t in tasks), tasks
    for name in ("stats_job", "merge_job"):
        assert_completed(cluster, int(ids[name]))

    def normalised(manifest: dict) -> dict:
        for entry in manifest["datasets"].values():
            entry.pop("source_dir")
        return manifest

    assert normalised(read_manifest(out)) == normalised(read_manifest(tmp_path / "single"))
    shards = sorted(p.relative_to(out) for p in out.rglob("*.tar"))
    assert shards == sorted(
        p.relative_to(tmp_path / "single") for p in (tmp_path / "single").rglob("*.tar")
    )
    for rel in shards:
        assert (out / rel).read_bytes() == (tmp_path / "single" / rel).read_bytes(), rel
    assert not (out / "parts").exists()


# ----------------------------------------------------------------------------- argument
# pass-through
@pytest.mark.slow
@pytest.mark.slurm
def test_finetune_sbatch_passes_arguments_through(cluster, tmp_path):
    log = tmp_path / "job.out"
    job = sbatch(
        "finetune.sbatch",
        "--config",
        "configs/finetune/x.yaml",
        "--ckpt",
        "runs/p",
        "--data",
        "d",
        "trainer.max_steps=3",
        options=(
            "--nodes=1",
            "--ntasks-per-node=1",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--time=2",
            f"--output={log}",
        ),
        env=job_env(PHYSFM="echo physfm", RUN_DIR=str(tmp_path / "ft")),
    )
    wait_for_job(job, timeout=60, log=log)
    assert_completed(cluster, job, log)
    assert (
        f"0: physfm finetune --out {tmp_path / 'ft'} --config configs/finetune/x.yaml --ckpt runs/p --data d "
        "trainer.max_steps=3 strategy.accelerator=cpu strategy.process_group_backend=gloo"
    ) in log.read_text()


@pytest.mark.slow
@pytest.mark.slurm
def test_finetune_sbatch_runs_deepspeed_on_two_nodes(cluster, tmp_path):
    """A real fine-tune job, 2 nodes x 1 task, ZeRO-2: rank 0 prepares data and tokenizer, both
    train."""
    from tests.datagen import make_toy_dataset
    from tests.rollout_fixtures import build_tiny_model

    pretrained = build_tiny_model(tmp_path / "pre")["export"]
    data = make_toy_dataset(tmp_path / "toy", "toy", n_steps=10)
    run_dir, log = tmp_path / "ft", tmp_path / "job.out"
    job = sbatch(
        "finetune.sbatch",
        "--config",
        "configs/finetune/tiny.yaml",
        "--ckpt",
        str(pretrained),
        "--data",
        str(data),
        "trainer.max_steps=6",
        "trainer.checkpoint_every=6",
        "data.batch_size=4",
        "finetune.tokenizer_steps=5",
        "finetune.eval_max_windows=4",
        "finetune.eval_horizons=[1,2]",
        "strategy.name=deepspeed",
        "strategy.zero_stage=2",
        options=(
            "--nodes=2",
            "--ntasks-per-node=1",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--time=10",
            f"--output={log}",
        ),
        env=job_env(RUN_DIR=str(run_dir)),
    )
    wait_for_job(job, timeout=240, log=log)
    record = assert_completed(cluster, job, log)
    assert record["NumNodes"] == "2" and record["NumTasks"] == "2"
    text = log.read_text()
    assert re.search(r"^1: ", text, re.M), "rank 1 wrote nothing: the job did not run 2 ranks"
    assert "physfm launch: finetune exited with code 0" in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["dataset_names"][-1] == "toy"
    assert len(list((run_dir / "checkpoints" / "step=0000006.ckpt").rglob("*optim_states.pt"))) == 2
    assert (run_dir / "report.md").is_file() and (run_dir / "tokenizer").is_dir()


# ----------------------------------------------------------------------------- without Slurm
def launch(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run launch.sh's checks with a faked Slurm environment (they fail before srun is reached)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(
        ["bash", "-c", f"source {SLURM_DIR / 'launch.sh'}; physfm_launch pretrain --config c"],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=30,
    )


def test_launch_refuses_a_bad_gpu_layout():
    proc = launch({"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "8"})
    assert proc.returncode == 2 and "has no GPUs" in proc.stderr
    proc = launch(
        {"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_PER_NODE": "a100:8"}
    )
    assert (
        proc.returncode == 2 and "one task per GPU: --ntasks-per-node=4 but 8 GPU(s)" in proc.stderr
    )
    proc = launch({"SLURM_JOB_ID": "7", "PHYSFM_DEVICE": "tpu"})
    assert proc.returncode == 2 and "PHYSFM_DEVICE must be gpu or cpu" in proc.stderr
    assert "not inside a Slurm job" in launch({}).stderr


@pytest.mark.slow
def test_sigusr1_stops_after_a_step_with_a_checkpoint_and_resumes(tmp_path, monkeypatch):
    """The training-layer half of requeueing, in one process: SIGUSR1 → checkpoint →
    TrainingStopped; the same config then resumes from that checkpoint and finishes."""
    import signal

    from physfm.train.module import STOPPED_EXIT_CODE, ARModule, TrainingStopped
    from physfm.train.pretrain import load_pretrain_config, run_pretrain
    from tests.datagen import make_token_shards

    handler_before = signal.getsignal(signal.SIGUSR1)

    tokens = make_token_shards(tmp_path / "tokens")
    original = ARModule.loss
    sent = []

    def loss(self, batch):
        if self.training and self.global_step == 5 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)  # arrives mid-step: the step still completes
        return original(self, batch)

    monkeypatch.setattr(ARModule, "loss", loss)
    cfg = lambda: load_pretrain_config(
        "configs/pretrain/tiny.yaml",
        TINY
        + [
            f"data.tokens=[{tokens}]",
            f"out={tmp_path / 'run'}",
            "trainer.max_steps=12",
            "trainer.val_every=0",
            "trainer.checkpoint_every=100",
        ],
    )
    with pytest.raises(TrainingStopped) as stopped:
        run_pretrain(cfg())
    assert stopped.value.step == 6 and stopped.value.exit_code == STOPPED_EXIT_CODE == 75
    assert signal.getsignal(signal.SIGUSR1) == handler_before  # handler restored after fit
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped_at_step"] == 6
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step=0000006.ckpt"
    ]
    run_pretrain(cfg())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["resumed_from"].endswith("step=0000006.ckpt")
