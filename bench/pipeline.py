"""The benches' shared training pipeline: the project's own entry points (tokenizer training,
``physfm pretrain``, the rollout refiner) run for a wall-clock budget, with the optimiser step count
set from a measured step time so each cosine schedule ends on its budget.

Used by bench/forecast.py, bench/generalization.py and bench/transfer.py; not a bench itself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from data_pipelines.config import load_config
from data_pipelines.manifest import Manifest
from physfm.inference import PhysicsModel
from physfm.models.ar import PhysicsTransformer
from physfm.models.refiner import Refiner, save_refiner, state_sha256
from physfm.train.config import PretrainConfig, load_pretrain_config
from physfm.train.module import window_to_sequence
from physfm.train.pretrain import run_pretrain
from physfm.train.recipes import RECIPES
from physfm.train.refine import (
    RefineRunConfig,
    collect_pairs,
    fit_refiner,
    pair_vrmse,
    refiner_improves,
    rollout_gate_vrmse,
)
from tokenizer.encode import encode_shards
from tokenizer.model import field_frames
from tokenizer.training import TokenizerTrainConfig, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
REFINE_ROLLOUT_STEPS = 4  # frames of the AR model's own rollout the refiner learns to correct


def log(msg: str) -> None:
    print(msg, flush=True)


def train_tok(shards: Path, out: Path, config: str, seconds: float, seed: int) -> Path:
    cfg = load_config(
        TokenizerTrainConfig,
        ROOT / "configs/tokenizer" / config,
        [
            f"data.shards={shards}",
            f"out={out}",
            f"seed={seed}",
            f"trainer.max_time_s={seconds}",  # the cosine schedule follows the wall-clock budget
            "trainer.max_steps=1000000",
            "trainer.wandb=false",
            "data.val_batches=0",
            "trainer.log_every=1000",
            "trainer.verbose=false",
        ],
    )
    threads = torch.get_num_threads()
    try:
        return train_tokenizer(cfg)
    finally:
        # the tiny tokenizer trains single-threaded; the rest uses --threads
        torch.set_num_threads(threads)


def step_seconds(step: Callable[[], None], repeats: int = 3) -> float:
    """Measured seconds of one call of ``step`` (an optimiser step): the fastest of ``repeats``
    after the first, which pays for allocation."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def ar_step_seconds(cfg: PretrainConfig, n_frames: int) -> float:
    """Measured seconds per optimiser step of the AR model on a random token batch of the run's
    shape."""
    torch.manual_seed(0)
    model = PhysicsTransformer(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    grid = tuple(cfg.model.grid_shape)
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.data.batch_size, n_frames, *grid))
    idx, targets, grid = window_to_sequence(tokens, 1)
    ids = torch.zeros(cfg.data.batch_size, dtype=torch.long)

    def step() -> None:
        if cfg.stability.pushforward > 0:  # the no-gradient step on the model's own predictions
            n = max(1, round(cfg.stability.pushforward * len(idx)))
            with torch.no_grad():
                model(idx[:n], grid, ids[:n])
        _, loss = model(idx, grid, ids, targets=targets, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step_seconds(step)


def fm_step_seconds(cfg: PretrainConfig) -> float:
    """Measured seconds per optimiser step of the flow-matching model on a random field batch of
    the run's shape, the frozen tokenizer's encoding into latents included (as in training)."""
    recipe = RECIPES["diffusion"]
    info = recipe.describe(cfg)
    torch.manual_seed(0)
    module = recipe.build_module(cfg, info)
    tok, name = module.tokenizer, info["dataset_names"][0]
    c = tok.cfg.temporal_compression
    n_in, n_all = field_frames(info["n_context"], c), field_frames(info["n_frames"], c)
    space = [g * tok.cfg.spatial_compression for g in cfg.model.grid_shape]
    fields = torch.randn(cfg.data.batch_size, n_all, tok.datasets[name].n_channels, *space)
    batch = {"input": fields[:, :n_in], "output": fields[:, n_in:], "dataset": name}
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)

    def step() -> None:
        module.loss(batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step_seconds(step)


def train_on_budget(
    config: str,
    overrides: list[str],
    seconds: float,
    seconds_per_step: Callable[[PretrainConfig], float],
    steps: int | None = None,
) -> tuple[Path, int]:
    """``physfm pretrain`` of ``config`` for ``seconds``: max_steps from ``seconds_per_step`` of the
    loaded config (so the cosine decay ends on the budget; 10 % left for Lightning and data),
    ``trainer.max_time_s`` as the hard cap. ``steps``: a fixed step count instead (no clock: the
    same numbers on a busy machine). → (run, steps)."""
    path = str(ROOT / "configs/pretrain" / config)
    if steps is None:
        per_step = seconds_per_step(load_pretrain_config(path, overrides))
        steps = max(10, int(0.9 * seconds / per_step))
    cfg = load_pretrain_config(
        path,
        [
            *overrides,
            f"trainer.max_steps={steps}",
            f"trainer.max_time_s={seconds}",
            f"trainer.checkpoint_every={steps}",
            "trainer.keep_last=1",
            f"trainer.log_every={max(1, steps // 10)}",
            f"optim.warmup_steps={min(20, steps // 5)}",
        ],
    )
    run = run_pretrain(cfg)
    return run, json.loads((run / "metrics.json").read_text()).get("steps", steps)


# The bench's pretraining runs: no validation, CSV logs, no matmul-peak probe (MFU is not reported).
QUIET_PRETRAIN = (
    "trainer.logger=csv",
    "trainer.progress_bar=false",
    "trainer.peak_tflops=1",
    "data.num_workers=0",
    "data.val_batches=0",
    "resume=none",
)


def token_grid(manifest: Manifest) -> list[int]:
    """The spatial token grid of a token-shard set (every dataset in it shares one)."""
    return list(next(iter(manifest.datasets.values())).token_grid[1:])


def train_ar(
    tokens: Path,
    tok: Path,
    out: Path,
    prediction: str,
    seconds: float,
    seed: int,
    extra: tuple[str, ...] = (),
    steps: int | None = None,
) -> tuple[Path, int]:
    """The tiny AR model for ``seconds`` (:func:`train_on_budget` at its measured step time);
    ``extra`` config overrides (an ablation's lever); ``steps``: a fixed step count instead. →
    (run, steps)."""
    manifest = Manifest.load(tokens)
    overrides = [
        f"model.fsq_levels={list(manifest.tokenizer.levels)}",
        f"data.tokens=[{tokens}]",
        f"out={out}",
        f"tokenizer={tok}",
        f"seed={seed}",
        f"model.grid_shape={token_grid(manifest)}",
        f"model.prediction={prediction}",
        *QUIET_PRETRAIN,
        *extra,
    ]
    return train_on_budget(
        "tiny.yaml",
        overrides,
        seconds,
        lambda cfg: ar_step_seconds(cfg, cfg.model.max_frames),
        steps,
    )


def train_flow_matching(
    shards: Path, tok: Path, tokens: Path, out: Path, seconds: float, seed: int
) -> tuple[Path, int]:
    """The tiny flow-matching model (configs/pretrain/diffusion_tiny.yaml: the AR tiny model's
    trunk) on the field ``shards``, the frozen tokenizer ``tok`` encoding each window's continuous
    latents on the fly, for ``seconds`` (:func:`train_on_budget` at its measured step time). The
    latent grid is read from the same tokenizer's token shards ``tokens``. → (run, steps)."""
    overrides = [
        f"data.shards=[{shards}]",
        f"out={out}",
        f"tokenizer={tok}",
        f"seed={seed}",
        f"model.grid_shape={token_grid(Manifest.load(tokens))}",
        *QUIET_PRETRAIN,
    ]
    return train_on_budget("diffusion_tiny.yaml", overrides, seconds, fm_step_seconds)


def train_refiner(
    ar_run: Path,
    shards: Path,
    out: Path,
    seconds: float,
    rollout_steps: int,
    n_windows: int,
    seed: int,
) -> dict[str, Any]:
    """Fit the refiner to ``ar_run`` within ``seconds``: pairs from the AR model's own
    ``rollout_steps``-frame rollouts of ``n_windows`` training windows per dataset, then as many
    steps as the rest of the budget holds at a measured step time (cosine over those steps). Writes
    ``out`` (a refiner directory)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    pm = PhysicsModel.from_pretrained(ar_run, refiner=False)
    pairs = collect_pairs(pm, shards, "train", n_windows, rollout_steps=rollout_steps)
    t_pairs = time.perf_counter() - start
    cfg = RefineRunConfig(ckpt=str(ar_run), seed=seed)  # the refiner's defaults, as `physfm refine`
    cfg.data.shards, cfg.data.rollout_steps, cfg.data.n_windows = (
        str(shards),
        rollout_steps,
        n_windows,
    )
    refiner = Refiner(cfg.model, pm.n_spatial_dims, {n: pm.channel_names(n) for n in pairs})
    probe, t0 = copy.deepcopy(refiner), time.perf_counter()
    fit_refiner(
        probe,
        pairs,
        dataclasses.replace(cfg.train, steps=4, log_every=4),
        cfg.data.batch_size,
        seed,
    )
    per_step = (time.perf_counter() - t0) / 4
    cfg.train.steps = max(20, int((seconds - (time.perf_counter() - start)) / per_step))
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, cfg.train.steps // 5)
    cfg.train.log_every = cfg.train.steps
    history = fit_refiner(refiner, pairs, cfg.train, cfg.data.batch_size, seed)
    # As `physfm refine`: one-step held-out pairs decide whether rollouts use the refiner by
    # default.
    split = "valid" if "valid" in Manifest.load(shards).splits else "train"
    held_out = pair_vrmse(refiner, collect_pairs(pm, shards, split, n_windows), pm.tokenizer)
    improves = refiner_improves(held_out)
    if improves and cfg.data.gate_horizon > 0:  # and a held-out rollout, as `physfm refine`
        d = cfg.data
        improves = refiner_improves(
            rollout_gate_vrmse(pm, refiner, shards, split, d.gate_windows, d.gate_horizon)
        )
    info = {
        "ar": str(ar_run),
        "improves": improves,
        "improves_split": split,
        "ar_sha256": state_sha256(pm.model),
        "tokenizer_fingerprint": pm.info.get("tokenizer_fingerprint"),
        "train": {
            "steps": cfg.train.steps,
            "n_pairs": {k: len(v) for k, v in pairs.items()},
            "loss_history": history,
        },
    }
    save_refiner(refiner, out, info)
    return {
        "steps": cfg.train.steps,
        "pairs_s": round(t_pairs, 1),
        "loss": round(history[-1][1], 4),
        "improves": info["improves"],
    }


def train_pipeline(
    shards: Path,
    out: Path,
    budget: dict[str, float],
    args,
    tokenizer_config: str = "tiny_conditional.yaml",
    prediction: str = "next_frame",
    tokenized: tuple[Path, Path] | None = None,
    ar_extra: tuple[str, ...] = (),
) -> tuple[Path, dict[str, float], dict[str, int]]:
    """Tokenizer + encode (unless ``tokenized`` = (tokenizer, token shards) is given) + AR
    (``ar_extra``: config overrides) + rollout refiner → (AR run, seconds per stage, steps per
    stage)."""
    seconds, steps = {}, {}
    if tokenized is None:
        start = time.perf_counter()
        tok = train_tok(shards, out / "tokenizer", tokenizer_config, budget["tokenizer"], args.seed)
        seconds["tokenizer"] = time.perf_counter() - start
        steps["tokenizer"] = json.loads((tok / "tokenizer.json").read_text())["train"]["step"]
        start = time.perf_counter()
        # the AR trains without validation
        tokens = encode_shards(tok, shards, out / "tokens", splits=["train"])
        seconds["encode"] = time.perf_counter() - start
    else:
        tok, tokens = tokenized
    start = time.perf_counter()
    ar, steps["ar"] = train_ar(
        tokens, tok, out / "ar", prediction, budget["ar"], args.seed, ar_extra
    )
    seconds["ar"] = time.perf_counter() - start
    start = time.perf_counter()
    ref = train_refiner(
        ar,
        shards,
        ar / "refiner",
        budget["refiner"],
        REFINE_ROLLOUT_STEPS,
        args.refine_windows,
        args.seed,
    )
    seconds["refiner"] = time.perf_counter() - start
    steps["refiner"] = ref["steps"]
    return ar, seconds, steps
