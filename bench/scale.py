"""Scale proof on this machine: the 1b config through the real ``physfm pretrain`` path (Lightning +
DeepSpeed, gloo, 2 ranks on CPU), with measured memory beside ``physfm estimate --device cpu``.

What it runs, in one go (about 20 minutes on 2 cores, 24 GiB):

1. data: the built-in Gray–Scott system at 32², sharded into 2-frame windows, a tokenizer with the
   1b vocabulary (FSQ [8, 8, 8, 5, 5, 5] = 64,000 codes) trained for a few steps, token shards of
   8×8 tokens;
2. three memory runs, a few optimizer steps each: peak resident memory of each rank read from the OS
   (``VmHWM`` of /proc/PID/status: the kernel's high-water mark, so no peak falls between samples),
   beside ``physfm estimate --device cpu --dtype D`` for the same settings:
   - ZeRO-3, bf16-mixed (configs/pretrain/1b_cpu.yaml as it is: the whole 1b);
   - ZeRO-2 with the optimizer offloaded (DeepSpeedCPUAdam), bf16-mixed;
   - ZeRO-3 in fp32;
   the last two at the 1b widths with as many layers as the estimate says fit two ranks in this machine's
   free memory (all 16 where they do);
3. resume: a ZeRO-3 run that writes a checkpoint at step 2, killed (SIGKILL) while it takes step 3,
   then resumed from that checkpoint; its losses must equal the uninterrupted run's (the first of
   2.) bit for bit;
4. ``physfm export`` of that checkpoint: one safetensors file of 4 bytes × parameters (+ its
   header), which ``PhysicsModel.from_pretrained`` loads and rolls out one frame with;
5. the 4p5b and 12b configs built on the meta device and counted, and one transformer block of each
   run forward and backward at its real width.

Prints a table, then one JSON line (``zero3``/``zero2_offload``/``zero3_fp32``:
``peak_gib_per_rank``, ``estimate_gib_per_rank``, ``ratio``; ``resume_exact``; ``export_bytes``;
``n_params``; ...).

    python bench/scale.py [--out DIR] [--steps 4] [--n-layer N (a quick check: fewer layers)]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.processes import GiB, launch_pretrain, meminfo, status, worker_env  # noqa: E402
from physfm.core.checkpoint import checkpoint_step, list_checkpoints  # noqa: E402

CONFIG = REPO / "configs" / "pretrain" / "1b_cpu.yaml"
CKPT_STEP = 2  # the resume check's checkpoint
PRECISION = {"bf16": "bf16-mixed", "fp32": "32-true"}
# The memory runs: key -> (label, ZeRO stage, offload, dtype); the first is the resume check's
# reference.
MEMORY_RUNS = {
    "zero3": ("ZeRO-3", 3, "none", "bf16"),
    "zero2_offload": ("ZeRO-2 + offload", 2, "optimizer", "bf16"),
    "zero3_fp32": ("ZeRO-3", 3, "none", "fp32"),
}
# Of MemAvailable, what two ranks' estimates may add up to: measured peaks run ~1.1-1.2x the
# estimate (the runtime and allocator slack it does not count), and the OS and this process need the
# rest.
FREE_MEMORY_SHARE = 0.8


def losses(run_dir: Path) -> dict[int, float]:
    """Train loss of optimizer step n = 1, 2, ... (rank 0's log, every run segment; the CSV counts
    from 0)."""
    from physfm.train.pretrain import read_loss_history

    return {step + 1: loss for step, loss in read_loss_history(run_dir)}


def checkpoint_times(log: str) -> dict[str, float]:
    """Seconds to write and to read a checkpoint, from the lines the DeepSpeed strategy prints."""
    out = {}
    written = re.findall(r"checkpoint \S+ written in ([\d.]+) s", log)
    read = re.findall(r"checkpoint \S+ loaded in ([\d.]+) s", log)
    if written:
        out["write_s"] = float(written[-1])
    if read:
        out["read_s"] = float(read[-1])
    return out


def runtime_bytes() -> int:
    """Peak resident memory of a process that imports what a rank imports (torch, Lightning,
    DeepSpeed, physfm's training code) and does nothing else: the part of each rank's memory no
    estimate counts."""
    code = "import deepspeed, lightning, torch; import physfm.train.pretrain; import physfm.train.strategies"
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}; print(open('/proc/self/status').read())"],
        cwd=REPO,
        env=worker_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout.split("VmHWM:")[1].split()[0]) * 1024


def remove_checkpoints(run_dir: Path) -> None:
    """Free the disk a finished run's checkpoints hold (the 1b's are ~12 GB each)."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- estimate
def model_config(overrides: list[str]):
    from physfm.train.pretrain import load_pretrain_config

    return load_pretrain_config(str(CONFIG), ["data.tokens=[unused]", *overrides]).model


def estimate_per_rank(cfg, stage: int, offload: str, dtype: str, nproc: int = 2):
    """``physfm estimate --device cpu --dtype DTYPE``'s row for this run: bytes per rank."""
    from physfm.train.estimate import estimate

    est = estimate(cfg, nodes=1, gpus_per_node=nproc, micro_batch=1, device="cpu", dtype=dtype)
    return next(r for r in est.rows if (r.stage, r.offload) == (stage, offload)), est


def layers_that_fit(stage: int, offload: str, dtype: str, available: int, nproc: int = 2) -> int:
    """The most layers (≤ the config's) at the 1b widths whose estimate fits ``nproc`` ranks in
    ``available``."""
    n_layer = model_config([]).n_layer
    while n_layer > 1:
        row, _ = estimate_per_rank(
            model_config([f"model.n_layer={n_layer}"]), stage, offload, dtype, nproc
        )
        if nproc * row.total_ckpt <= available:
            return n_layer
        n_layer -= 1
    return 1


# ----------------------------------------------------------------------------- data
def make_tokens(work: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """(field shards, tokenizer checkpoint, token shards): Gray–Scott 32² → 2-frame windows → 8×8
    tokens from a tokenizer with the 1b model's 64,000-code FSQ (trained a few steps: the tokens are
    real ones)."""
    from data_pipelines.config import load_config
    from data_pipelines.sharding import WindowSpec, shard_datasets
    from data_pipelines.simulators import simulate_dataset
    from tokenizer.encode import encode_shards
    from tokenizer.training import TokenizerTrainConfig, train_tokenizer

    data = simulate_dataset(
        "gray_scott2d",
        work / "data" / "gray_scott2d",
        n_traj=4,
        n_steps=16,
        resolution=32,
        seed=seed,
    )
    shards = work / "shards"
    shard_datasets([data], shards, WindowSpec(1, 1, 1), overwrite=True, workers=1)
    cfg = load_config(
        TokenizerTrainConfig,
        REPO / "configs" / "tokenizer" / "tiny.yaml",
        [
            f"data.shards={shards}",
            f"out={work / 'tokenizer'}",
            "model.levels=[8,8,8,5,5,5]",
            "trainer.max_steps=30",
            "trainer.val_every=1000",
            "trainer.ckpt_every=1000",
            "trainer.wandb=false",
            f"seed={seed}",
        ],
    )
    tokenizer = train_tokenizer(cfg)
    tokens = encode_shards(tokenizer, shards, work / "tokens")
    return shards, tokenizer, tokens


# ----------------------------------------------------------------------------- real-width blocks
def block_at_real_width(name: str, seq_len: int = 64) -> dict:
    """Build ``configs/model/NAME.yaml`` on the meta device (count), then one Block at its real
    width: forward and backward of ``seq_len`` tokens in fp32, every parameter gets a finite,
    non-zero gradient."""
    import torch

    from physfm.cli.estimate import load_model_config
    from physfm.models.ar import PhysicsTransformer
    from physfm.train.estimate import count_params

    cfg = load_model_config(REPO / "configs" / "model" / f"{name}.yaml")
    with torch.device("meta"):
        meta_model = PhysicsTransformer(cfg)
    n_params = meta_model.num_params()
    start = time.perf_counter()
    block = meta_model.blocks[0].to_empty(device="cpu")  # only this block gets memory
    torch.manual_seed(0)
    meta_model.init_weights()  # the model's own init (a no-op on what is still on the meta device)
    block_params = sum(p.numel() for p in block.parameters())
    x = torch.randn(1, seq_len, cfg.d_model, requires_grad=True)
    positions = torch.zeros(seq_len, 1 + cfg.n_spatial_dims, dtype=torch.long)
    positions[:, 0] = torch.arange(seq_len)
    cos, sin = meta_model._rope(positions)
    y = block(x, cos, sin)
    y.float().pow(2).mean().backward()
    grads_ok = all(
        p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
        for p in block.parameters()
    )
    out = {
        "n_params": n_params,
        "n_params_analytic": count_params(cfg).total,
        "block_params": block_params,
        "d_model": cfg.d_model,
        "ffn_hidden": cfg.ffn_hidden,
        "output_shape": list(y.shape),
        "output_finite": bool(torch.isfinite(y).all()),
        "grads_ok": bool(grads_ok and torch.isfinite(x.grad).all()),
        "residual_std": round(float((y - x).detach().std()), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    del block, x, y
    return out


# ----------------------------------------------------------------------------- the bench
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="work directory (default: a temporary one)"
    )
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per training run")
    parser.add_argument(
        "--n-layer", type=int, default=None, help="fewer layers, for a quick check of the bench"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (checkpoints are ~16 GB)"
    )
    args = parser.parse_args()
    if args.steps <= CKPT_STEP:
        parser.error(f"--steps must be > {CKPT_STEP} (the resume check's checkpoint step)")

    mem = meminfo()
    free_at_start = mem["MemAvailable"]
    print(
        f"machine: {os.cpu_count()} cores, {mem['MemTotal'] / GiB:.1f} GiB memory, "
        f"{free_at_start / GiB:.1f} GiB available at start",
        flush=True,
    )
    work = args.out or Path(tempfile.mkdtemp(prefix="physfm-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    depth = [f"model.n_layer={args.n_layer}"] if args.n_layer else []
    t0 = time.monotonic()
    shards, tokenizer, tokens = make_tokens(work / "data")
    print(f"data: tokens {tokens} ({time.monotonic() - t0:.0f} s)", flush=True)
    common = [
        f"data.tokens=[{tokens}]",
        f"tokenizer={tokenizer}",
        f"trainer.max_steps={args.steps}",
        *depth,
    ]
    cfg = model_config(depth)
    available = int(free_at_start * FREE_MEMORY_SHARE)
    runtime = runtime_bytes()
    print(
        f"runtime: {runtime / GiB:.2f} GiB resident after importing the training stack", flush=True
    )
    results: dict = {
        "free_gib_at_start": round(free_at_start / GiB, 2),
        "memtotal_gib": round(mem["MemTotal"] / GiB, 2),
    }

    # -- the memory runs: (key, label, ZeRO stage, offload, dtype); the first is the resume check's
    # reference
    for key, (label, stage, offload, dtype) in MEMORY_RUNS.items():
        # The reference run is the config as it is (the resume check repeats it); the others fit
        # what is here.
        n_layer = args.n_layer or (
            cfg.n_layer if key == "zero3" else layers_that_fit(stage, offload, dtype, available)
        )
        cfg_run = model_config([f"model.n_layer={n_layer}"])
        row, est = estimate_per_rank(cfg_run, stage, offload, dtype)
        full, _ = estimate_per_rank(cfg, stage, offload, dtype)
        if n_layer < cfg.n_layer:
            print(
                f"{label}: all {cfg.n_layer} layers need {2 * full.total_ckpt / GiB:.1f} GiB for 2 ranks (estimate), "
                f"more than {available / GiB:.1f} GiB ({FREE_MEMORY_SHARE:.0%} of what is available); running the "
                f"1b widths with {n_layer} layers",
                flush=True,
            )
        print(
            f"{label} {dtype}: {est.n_params / 1e9:.3f}B parameters, estimate {row.total_ckpt / GiB:.2f} GiB per rank",
            flush=True,
        )
        overrides = [
            *[c for c in common if not c.startswith("model.n_layer")],
            f"model.n_layer={n_layer}",
            f"strategy.zero_stage={stage}",
            f"strategy.offload_optimizer={str(offload != 'none').lower()}",
            f"strategy.precision={PRECISION[dtype]}",
            "resume=none",
        ]
        run = launch_pretrain(work / key, CONFIG, overrides)
        results[key] = summarize(run, row, est, n_layer, losses(work / key), runtime)
        results[key].update(
            label=label,
            dtype=dtype,
            full_depth_estimate_gib_per_rank=round(full.total_ckpt / GiB, 2),
        )
        report_run(label, results[key])
        # the reference run's checkpoint-free record is all the resume check needs of it
        if key != "zero3":
            remove_checkpoints(work / key)
    remove_checkpoints(work / "zero3")

    # -- resume: checkpoint at step 2, killed during step 3, resumed; losses against the reference
    resume_dir = work / "zero3_resume"
    ckpt_dir = resume_dir / "checkpoints"
    killed = launch_pretrain(
        resume_dir,
        CONFIG,
        [*common, f"trainer.checkpoint_every={CKPT_STEP}", "trainer.keep_last=5", "resume=none"],
        kill_when=lambda: complete_checkpoint(ckpt_dir, CKPT_STEP) is not None,
    )
    ckpt = complete_checkpoint(ckpt_dir, CKPT_STEP)
    if not killed["killed"] or ckpt is None:
        raise RuntimeError("the run to be killed finished before its checkpoint appeared")
    ckpt_bytes = dir_bytes(ckpt)
    ckpt_files = {
        p.name: p.stat().st_size
        for p in ckpt.rglob("*")
        if p.is_file() and p.stat().st_size > 1 << 20
    }
    resumed = launch_pretrain(
        resume_dir,
        CONFIG,
        [*common, f"trainer.checkpoint_every={CKPT_STEP}", "trainer.keep_last=5", "resume=auto"],
    )
    reference, after = results["zero3"]["losses"], losses(resume_dir)
    compared = {s: (reference.get(s), after.get(s)) for s in range(CKPT_STEP + 1, args.steps + 1)}
    results["resume"] = {
        "checkpoint": ckpt.name,
        "checkpoint_bytes": ckpt_bytes,
        # per rank: optimizer shard (fp32 master + Adam) and model states
        "checkpoint_files_bytes": ckpt_files,
        **checkpoint_times(killed["log"]),
        **{k: v for k, v in checkpoint_times(resumed["log"]).items() if k == "read_s"},
        "killed_after_s": killed["seconds"],
        "losses_reference": {s: r for s, (r, _) in compared.items()},
        "losses_resumed": {s: a for s, (_, a) in compared.items()},
        "peak_gib_per_rank_resumed": [round(b / GiB, 2) for b in resumed["peak_bytes"].values()],
    }
    results["resume_exact"] = all(r is not None and r == a for r, a in compared.values())
    # Each rank's optimizer shard (fp32 master + Adam m, v) against the 12 bytes/param one rank
    # would hold alone.
    optim_shards = [b for name, b in ckpt_files.items() if name.endswith("optim_states.pt")]
    results["resume"]["optimizer_shard_fraction"] = [
        round(b / (12 * results["zero3"]["n_params"]), 4) for b in optim_shards
    ]
    for extra in list_checkpoints(ckpt_dir):  # the resumed run's own final checkpoint: not needed
        if extra != ckpt:
            shutil.rmtree(extra)
    print(f"resume: {json.dumps({k: v for k, v in results['resume'].items()})}", flush=True)

    # -- export + from_pretrained
    n_params = results["zero3"]["n_params"]
    results["export"] = export_and_generate(ckpt, work / "export", tokenizer, shards, n_params)
    print(f"export: {json.dumps(results['export'])}", flush=True)

    # -- 4p5b, 12b: meta count + one block at real width
    results["blocks"] = {name: block_at_real_width(name) for name in ("4p5b", "12b")}
    for name, b in results["blocks"].items():
        print(f"{name}: {json.dumps(b)}", flush=True)

    results["seconds"] = round(time.monotonic() - t0, 1)
    print_table(results)
    print(json.dumps(final_json(results, n_params)))
    if not args.keep and args.out is None:
        shutil.rmtree(work, ignore_errors=True)


def complete_checkpoint(ckpt_dir: Path, step: int) -> Path | None:
    """The complete checkpoint a run wrote at ``step`` (directory named by Lightning, COMPLETE
    marker inside)."""
    return next((p for p in list_checkpoints(ckpt_dir) if checkpoint_step(p) == step), None)


def summarize(run: dict, row, est, n_layer: int, loss: dict[int, float], runtime: int) -> dict:
    peaks = list(run["peak_bytes"].values())
    estimate = row.total_ckpt
    return {
        # What the estimate leaves out: the runtime (measured apart), then allocator slack and the
        # rest.
        "runtime_gib": round(runtime / GiB, 2),
        "rest_gib": round((max(peaks) - estimate - runtime) / GiB, 2),
        "n_layer": n_layer,
        "n_params": est.n_params,
        "peak_gib_per_rank": [round(b / GiB, 2) for b in peaks],
        "end_rss_gib_per_rank": [round(b / GiB, 2) for b in run["last_rss_bytes"].values()],
        "estimate_gib_per_rank": round(estimate / GiB, 2),
        "estimate_parts_gib": {
            "params": round(row.params / GiB, 2),
            "grads": round(row.grads / GiB, 2),
            "optimizer": round(row.optimizer / GiB, 2),
            "step_scratch": round(row.step_scratch / GiB, 2),
            "activations": round(row.activations_ckpt / GiB, 2),
        },
        "ratio": round(max(peaks) / estimate, 3) if peaks else None,
        "seconds": run["seconds"],
        "losses": loss,
        "loss_falling": bool(loss)
        and all(map(math.isfinite, loss.values()))
        and loss[max(loss)] < loss[min(loss)],
    }


def report_run(name: str, r: dict) -> None:
    print(
        f"{name}: {r['n_layer']} layers, {r['n_params'] / 1e9:.3f}B params, peak {r['peak_gib_per_rank']} GiB per "
        f"rank vs estimate {r['estimate_gib_per_rank']} (ratio {r['ratio']}), losses "
        f"{[round(v, 4) for v in r['losses'].values()]}, {r['seconds']:.0f} s",
        flush=True,
    )


def export_and_generate(
    ckpt: Path, out: Path, tokenizer: Path, shards: Path, n_params: int
) -> dict:
    """``physfm export`` (its own process, memory sampled), then from_pretrained + a one-frame
    rollout."""
    args = [sys.executable, "-m", "physfm.cli", "export", "--ckpt", str(ckpt), "--out", str(out)]
    start = time.monotonic()
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, status(proc.pid).get("VmHWM", 0))
        time.sleep(0.2)
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"physfm export failed ({proc.returncode}):\n{output[-3000:]}")
    export_s = time.monotonic() - start
    weights = out / "model.safetensors"
    size = weights.stat().st_size
    import numpy as np
    import torch

    from data_pipelines.shards import iter_samples
    from physfm.inference import PhysicsModel

    start = time.monotonic()
    model = PhysicsModel.from_pretrained(out, tokenizer=tokenizer)
    load_s = time.monotonic() - start
    window = next(iter_samples(shards, "valid"))  # a held-out window, physical units
    context, dataset = torch.as_tensor(np.asarray(window["input"])), window["meta"]["dataset"]
    start = time.monotonic()
    frame = model.rollout(context, horizon=1, dataset=dataset)
    return {
        "export_bytes": size,
        "expected_bytes": 4 * n_params,
        "size_ratio": round(size / (4 * n_params), 6),
        "export_s": round(export_s, 1),
        "export_peak_gib": round(peak / GiB, 2),
        "load_s": round(load_s, 1),
        "generate_s": round(time.monotonic() - start, 1),
        "frame_shape": list(frame.shape),
        "frame_finite": bool(torch.isfinite(frame).all()),
    }


def print_table(results: dict) -> None:
    print()
    print(
        f"{'run':<24} {'layers':>6} {'params':>8} {'peak GiB/rank':>14} {'estimate':>9} {'ratio':>6} {'loss first→last':>17} {'s':>6}"
    )
    for key in MEMORY_RUNS:
        r = results[key]
        name = f"{r['label']} ({r['dtype']})"
        ls = list(r["losses"].values())
        print(
            f"{name:<24} {r['n_layer']:>6} {r['n_params'] / 1e9:>7.3f}B {max(r['peak_gib_per_rank']):>14.2f} "
            f"{r['estimate_gib_per_rank']:>9.2f} {r['ratio']:>6.3f} {f'{ls[0]:.3f}→{ls[-1]:.3f}':>17} {r['seconds']:>6.0f}"
        )
    res = results["resume"]
    print(
        f"resume from {res['checkpoint']}: exact={results['resume_exact']}, checkpoint "
        f"{res['checkpoint_bytes'] / GiB:.2f} GiB, write {res.get('write_s')} s, read {res.get('read_s')} s"
    )
    ex = results["export"]
    print(
        f"export: {ex['export_bytes']:,} bytes = {ex['size_ratio']:.6f} × 4 × params; from_pretrained "
        f"{ex['load_s']} s, one frame {ex['frame_shape']} finite={ex['frame_finite']}"
    )
    for name, b in results["blocks"].items():
        print(
            f"{name}: {b['n_params'] / 1e9:.3f}B params (meta), one block {b['block_params'] / 1e6:.0f}M at d_model "
            f"{b['d_model']}: fwd+bwd {b['seconds']} s, grads ok={b['grads_ok']}"
        )
    print(
        f"free memory at start: {results['free_gib_at_start']} GiB of {results['memtotal_gib']} GiB; {results['seconds']:.0f} s"
    )


def final_json(results: dict, n_params: int) -> dict:
    keep = (
        "n_layer",
        "peak_gib_per_rank",
        "estimate_gib_per_rank",
        "ratio",
        "runtime_gib",
        "rest_gib",
        "loss_falling",
        "seconds",
    )
    return {
        **{
            key: {**{k: results[key][k] for k in keep}, "dtype": results[key]["dtype"]}
            | {"full_depth_estimate_gib_per_rank": results[key]["full_depth_estimate_gib_per_rank"]}
            for key in MEMORY_RUNS
        },
        "resume_exact": results["resume_exact"],
        "checkpoint_bytes": results["resume"]["checkpoint_bytes"],
        "optimizer_shard_fraction": results["resume"]["optimizer_shard_fraction"],
        "checkpoint_write_s": results["resume"].get("write_s"),
        "checkpoint_read_s": results["resume"].get("read_s"),
        "export_bytes": results["export"]["export_bytes"],
        "export_size_ratio": results["export"]["size_ratio"],
        "n_params": n_params,
        "generated_frame_finite": results["export"]["frame_finite"],
        "blocks": {
            k: {"n_params": v["n_params"], "grads_ok": v["grads_ok"]}
            for k, v in results["blocks"].items()
        },
        "free_gib_at_start": results["free_gib_at_start"],
        "seconds": results["seconds"],
    }


if __name__ == "__main__":
    main()
