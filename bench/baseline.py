"""Our tiny token model vs persistence vs The Well's FNO baseline, on the same data and CPU wall-clock.

Pipeline (all in one run, seeded): simulate gray_scott2d and navier_stokes2d with the built-in simulators
(their default parameter sets, ``--n-traj`` trajectories per set split 4/1/1 at 6, ``--n-steps`` frames,
``--resolution``²), shard 4 + 1 frame windows, train the tiny tokenizer (configs/tokenizer/tiny.yaml) for
``--tok-seconds``, encode, pretrain the AR model (configs/pretrain/tiny.yaml, grid set by the data) for
``--ar-steps``, fit the refiner (physfm refine) for ``--refine-steps``; then train The Well's FNO
(neuraloperator 2.0.0 ``FNO``, The Well's benchmark settings: 16 modes per axis, 128 hidden channels,
4 Fourier layers, input = the 4 context frames stacked on channels, next frame out, z-scored fields,
MSE, AdamW; one model per dataset as in The Well) for the *same wall-clock* our model took to train
(tokenizer + AR + refiner), split evenly over the datasets. The Well's benchmark used lr 1e-4 with a
12 h GPU budget; on a few CPU minutes we use 1e-3 with a cosine schedule over the time budget.

Scored on the test split (windows of 4 context + 8 true frames cut from the source files, at most
``--eval-windows`` per dataset, greedy decoding), VRMSE of the 1st and 8th predicted frame (The Well's
definition, physical units), mean over datasets and fields:
  ar / model (the model as `PhysicsModel.rollout` runs by default: no refiner), ar_refined,
  persistence, copy_tokens, tokenizer_ceiling, fno, and refiner_only (the same U-Net trained for the same
  steps with the last context frame as its input instead of the AR prediction: does the AR add anything?).

    python bench/baseline.py [--resolution 32] [--n-traj 6] [--n-steps 32] [--tok-seconds 40] [--ar-steps 80]
                             [--refine-steps 120] [--eval-windows 16] [--threads 0] [--workdir DIR] [--seed 0]

The defaults take about 7 minutes on 2 idle cores (half of it the FNO's equal budget); on a shared machine
pass ``--threads 1``. Bigger budgets (e.g. ``--tok-seconds 300 --ar-steps 1000``) give the model a fairer
chance; the FNO's budget follows.

Last line: JSON with model_1, model_8, ar_1, ar_refined_1, persistence_1, persistence_8, fno_1, fno_8,
tokenizer_ceiling_1 (and more).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("gray_scott2d", "navier_stokes2d")
N_INPUT = 4
FNO_SETTINGS = dict(modes=16, hidden_channels=128, lr=1e-3, weight_decay=1e-5, batch_size=8)  # The Well's FNO


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------- our pipeline
def make_data(work: Path, args) -> Path:
    from data_pipelines.sharding import WindowSpec, shard_datasets
    from data_pipelines.simulators import simulate_dataset

    dirs = []
    for system in SYSTEMS:
        out = work / "data" / system
        start = time.perf_counter()
        simulate_dataset(
            system,
            out,
            n_traj=args.n_traj,
            n_steps=args.n_steps,
            resolution=args.resolution,
            seed=args.seed,
            overwrite=True,
        )
        log(f"  simulated {system} in {time.perf_counter() - start:.0f} s")
        dirs.append(out)
    shards = work / "shards"
    shard_datasets(dirs, shards, WindowSpec(N_INPUT, 1, 1), workers=1, overwrite=True)
    return shards


def train_ours(work: Path, shards: Path, args) -> tuple[Path, dict[str, float]]:
    from data_pipelines.config import load_config
    from physfm.train.pretrain import load_pretrain_config, run_pretrain
    from physfm.train.refine import load_refine_config, run_refine
    from tokenizer.encode import encode_shards
    from tokenizer.training import TokenizerTrainConfig, train_tokenizer

    seconds = {}
    start = time.perf_counter()
    cfg = load_config(
        TokenizerTrainConfig,
        ROOT / "configs/tokenizer/tiny.yaml",
        [
            f"data.shards={shards}",
            f"out={work / 'tokenizer'}",
            f"seed={args.seed}",
            f"trainer.max_time_s={args.tok_seconds}",
            "trainer.max_steps=1000000",
            "trainer.wandb=false",
            "data.val_batches=0",
            "trainer.log_every=100",
            "trainer.verbose=false",
        ],
    )
    tok = train_tokenizer(cfg)
    seconds["tokenizer"] = time.perf_counter() - start
    log(f"  tokenizer: {seconds['tokenizer']:.0f} s")
    start = time.perf_counter()
    tokens = encode_shards(tok, shards, work / "tokens")
    seconds["encode"] = time.perf_counter() - start
    grid = json.loads((tokens / "manifest.json").read_text())["datasets"][SYSTEMS[0]]["token_grid"][1:]
    start = time.perf_counter()
    pcfg = load_pretrain_config(
        str(ROOT / "configs/pretrain/tiny.yaml"),
        [
            f"data.tokens=[{tokens}]",
            f"out={work / 'ar'}",
            f"tokenizer={tok}",
            f"seed={args.seed}",
            f"model.grid_shape={list(grid)}",
            f"trainer.max_steps={args.ar_steps}",
            "trainer.logger=csv",
            "trainer.progress_bar=false",
            "data.num_workers=0",
            f"trainer.val_every={args.ar_steps}",
            f"trainer.checkpoint_every={args.ar_steps}",
            "trainer.log_every=10",
            "trainer.peak_tflops=1",
            f"optim.warmup_steps={min(20, args.ar_steps // 5)}",
        ],
    )
    ar = run_pretrain(pcfg)
    seconds["ar"] = time.perf_counter() - start
    log(f"  AR model: {args.ar_steps} steps in {seconds['ar']:.0f} s")
    start = time.perf_counter()
    rcfg = load_refine_config(
        None,
        [
            f"ckpt={ar}",
            f"data.shards={shards}",
            f"seed={args.seed}",
            f"train.steps={args.refine_steps}",
            "data.n_windows=48",
            "data.val_split=",
        ],
    )
    run_refine(rcfg, log=None)
    seconds["refiner"] = time.perf_counter() - start
    log(f"  refiner: {args.refine_steps} steps in {seconds['refiner']:.0f} s")
    return ar, seconds


def refiner_only(pm, shards: Path, args):
    """The refiner's U-Net trained alone: last context frame in, next frame out (the AR's role removed)."""
    from physfm.models.refiner import Refiner
    from physfm.train.refine import RefineRunConfig, collect_pairs, fit_refiner

    cfg = RefineRunConfig()  # the refiner's default architecture and optimiser, as `physfm refine`
    cfg.train.steps = args.refine_steps
    pairs = collect_pairs(pm, shards, "train", 48, source="persistence")
    net = Refiner(cfg.model, pm.n_spatial_dims, {n: pm.channel_names(n) for n in pairs})
    fit_refiner(net, pairs, cfg.train, 8, args.seed)
    net.eval()

    @torch.no_grad()
    def forecast(ctx, horizon, name):
        tok = pm.tokenizer
        history = tok.normalize(ctx.float(), name)
        for _ in range(horizon):
            history = torch.cat([history, net(history[:, -1], history[:, :-1], name)[:, None]], 1)
        return tok.denormalize(history[:, ctx.shape[1] :], name)

    return forecast


# ---------------------------------------------------------------------------------------------- FNO
def train_fno(shards: Path, name: str, n_channels: int, seconds: float, seed: int):
    """The Well's FNO on one dataset for ``seconds`` of wall-clock; returns (model, normalizer, steps)."""
    from neuralop.models import FNO

    from data_pipelines.loader import Normalizer, make_loader
    from data_pipelines.shards import read_manifest

    torch.manual_seed(seed)
    manifest = read_manifest(shards)
    n_dims = len(manifest["datasets"][name]["spatial_shape"])
    s = FNO_SETTINGS
    model = FNO(
        n_modes=(s["modes"],) * n_dims,
        in_channels=N_INPUT * n_channels,
        out_channels=n_channels,
        hidden_channels=s["hidden_channels"],
    )
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    loader = make_loader(
        str(shards),
        "train",
        s["batch_size"],
        resampled=True,
        batches_per_epoch=10**7,
        dataset_weights={name: 1.0},
        normalize=True,
        seed=seed,
    )
    start, steps = time.perf_counter(), 0
    model.train()
    for batch in loader:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        for group in opt.param_groups:  # cosine over the time budget, 5 % warm-up
            progress = elapsed / seconds
            group["lr"] = s["lr"] * (progress / 0.05 if progress < 0.05 else 0.5 * (1 + math.cos(math.pi * progress)))
        x = batch["input"].flatten(1, 2)  # [B, T_in * C, *space]: frames stacked on channels, as The Well
        loss = torch.nn.functional.mse_loss(model(x), batch["output"][:, 0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return model.eval(), Normalizer(manifest, name), steps, sum(p.numel() for p in model.parameters())


def fno_forecaster(models: dict):
    @torch.no_grad()
    def forecast(ctx, horizon, name):
        model, norm = models[name][:2]
        z = norm.normalize(ctx.float())
        for _ in range(horizon):
            z = torch.cat([z, model(z[:, -N_INPUT:].flatten(1, 2))[:, None]], 1)
        return norm.denormalize(z[:, ctx.shape[1] :])

    return forecast


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--n-traj", type=int, default=6, help="trajectories per parameter set (split 4/1/1)")
    p.add_argument("--n-steps", type=int, default=32)
    p.add_argument("--tok-seconds", type=float, default=40)
    p.add_argument("--ar-steps", type=int, default=80)
    p.add_argument("--refine-steps", type=int, default=120)
    p.add_argument("--eval-windows", type=int, default=16, help="test windows per dataset")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="physfm-bench-baseline-"))
    log(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; workdir {work}; seed {args.seed}"
    )
    log(
        f"data: {', '.join(SYSTEMS)} (default parameter sets), {args.n_traj} trajectories per set, "
        f"{args.n_steps} frames, {args.resolution}²; windows {N_INPUT} + 1 frames"
    )
    from physfm.eval.evaluate import score_windows, summarize
    from physfm.inference import PhysicsModel

    t0 = time.perf_counter()
    shards = make_data(work, args)
    t_data = time.perf_counter() - t0
    ar_run, seconds = train_ours(work, shards, args)
    budget = seconds["tokenizer"] + seconds["ar"] + seconds["refiner"]
    pm = PhysicsModel.from_pretrained(ar_run)
    start = time.perf_counter()
    only = refiner_only(pm, shards, args)
    seconds["refiner_only"] = time.perf_counter() - start
    fnos = {}
    for name in pm.dataset_names:
        fnos[name] = train_fno(shards, name, len(pm.channel_names(name)), budget / len(pm.dataset_names), args.seed)
        log(
            f"  FNO {name}: {fnos[name][2]} steps in {budget / len(pm.dataset_names):.0f} s "
            f"({fnos[name][3] / 1e6:.2f}M parameters)"
        )
    start = time.perf_counter()
    scores, method_seconds = score_windows(
        pm,
        shards,
        "test",
        8,
        methods=("ar", "ar_refined", "persistence", "copy_tokens", "tokenizer_ceiling"),
        max_windows=args.eval_windows,
        extra={"fno": fno_forecaster(fnos), "refiner_only": only},
    )
    seconds["evaluate"] = time.perf_counter() - start
    summary = summarize(scores, [1, 8])
    overall = summary["overall"]
    methods = ["ar", "ar_refined", "refiner_only", "fno", "persistence", "copy_tokens", "tokenizer_ceiling"]
    log(f"\nVRMSE of the k-th predicted frame, test split ({summary['n_windows']} windows; 1.0 = spatial mean)")
    log(
        f"{'method':<20}"
        + "".join(f"{n[:14] + ' h1':>18}{'h8':>7}" for n in sorted(scores))
        + f"{'mean h1':>10}{'h8':>7}"
    )
    for m in methods:
        per = "".join(
            f"{summary['vrmse'][n]['mean'][m]['1']:>18.3f}{summary['vrmse'][n]['mean'][m]['8']:>7.3f}"
            for n in sorted(scores)
        )
        log(f"{m:<20}{per}{overall[m]['1']:>10.3f}{overall[m]['8']:>7.3f}")
    n_params = pm.model.num_params()
    log(
        f"\nour model: {n_params / 1e6:.2f}M-parameter AR transformer, {args.ar_steps} steps; training wall-clock "
        f"(tokenizer + AR + refiner) {budget:.0f} s = each FNO's share x {len(fnos)}; "
        f"seconds: data {t_data:.0f}, " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
    )
    result = {f"{m}_{h}": round(overall[m][h], 4) for m in methods for h in ("1", "8")}
    result.update(model_1=result["ar_1"], model_8=result["ar_8"])
    result["per_dataset"] = {
        n: {f"{m}_{h}": round(summary["vrmse"][n]["mean"][m][h], 4) for m in methods for h in ("1", "8")}
        for n in sorted(scores)
    }
    result.update(
        n_windows=summary["n_windows"],
        seconds={k: round(v, 1) for k, v in seconds.items()},
        fno_steps={n: f[2] for n, f in fnos.items()},
        ar_steps=args.ar_steps,
        seed=args.seed,
        resolution=args.resolution,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
