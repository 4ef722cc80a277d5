"""``physfm refine``: fit the refinement U-Net (``physfm/models/refiner.py``) to a trained AR
model's predictions.

The AR model is frozen. Its one-step greedy prediction is computed once for a fixed, evenly spread
set of training windows per dataset (generation is the expensive part on a CPU; a few hundred
windows take about as long as the whole fit), then the refiner trains for ``train.steps`` steps on
those (prediction, context) → truth pairs, z-scored with the tokenizer's stats, MSE loss, AdamW with
warmup and cosine decay. Validation windows (the ``valid`` split when the shards have one) give the
VRMSE of the raw AR prediction and of the refined one, side by side, in ``metrics.json`` and
``report.md``.

Outputs: ``OUT/refiner.safetensors`` + ``OUT/refiner.json`` (see ``physfm/models/refiner.py``),
``metrics.json``, ``report.md``. ``OUT`` defaults to ``CKPT/refiner`` for a run or export directory,
where ``PhysicsModel.from_pretrained(CKPT)`` finds it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_pipelines.atomic import atomic_write_text
from data_pipelines.config import ConfigError, check_optimizer, load_config, to_dict, validate_tree
from data_pipelines.manifest import Manifest
from data_pipelines.run_record import write_metrics
from physfm.eval.windows import evaluation_windows
from physfm.inference import PhysicsModel
from physfm.models.refiner import Refiner, RefinerConfig, save_refiner, state_sha256
from physfm.train.config import lr_lambda
from tokenizer.metrics import vrmse


@dataclass
class RefineDataConfig:
    shards: str = ""  # field shards the AR model's tokens were made from (physfm data shard --out)
    split: str = "train"
    n_windows: int = 128  # training windows per dataset (AR predictions computed once for each)
    # Steps of the AR model's own rollout each window contributes (PhysiX trains on saved rollouts):
    # step k's pair is (decoded prediction k, the last context frames of true context + raw
    # predictions before it, true frame k), so the refiner sees the compounding error it must
    # correct. 1 = one-step predictions from true context only (teacher forcing).
    rollout_steps: int = 4
    val_split: str = "valid"  # "" = no validation
    val_windows: int = 32  # per dataset
    # The default-on gate also rolls out this many frames on held-out windows (gate_windows per
    # dataset) with and without the refiner: a refiner that helps the first step can hurt every
    # later one (Burgers).
    gate_horizon: int = 8  # 0 = the one-step check alone
    gate_windows: int = 8
    batch_size: int = 8


@dataclass
class RefineOptimConfig:
    steps: int = 300
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 20
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    log_every: int = 50

    def validate(self) -> None:
        check_optimizer(self, "train")
        if self.steps < 1:
            raise ConfigError(f"train.steps: must be >= 1, got {self.steps}")


@dataclass
class RefineRunConfig:
    ckpt: str = ""  # the AR model: pretrain run, checkpoint or export directory
    out: str = ""  # default: CKPT/refiner for a directory, else runs/refine-<timestamp>
    tokenizer: str = ""  # override the tokenizer the run names
    seed: int = 0
    model: RefinerConfig = field(default_factory=RefinerConfig)
    data: RefineDataConfig = field(default_factory=RefineDataConfig)
    train: RefineOptimConfig = field(default_factory=RefineOptimConfig)

    def validate(self) -> None:
        if not self.ckpt:
            raise ConfigError("ckpt: required (the AR run, checkpoint or export to refine)")
        if not self.data.shards:
            raise ConfigError("data.shards: required (the field shards the model was trained on)")
        for key in ("n_windows", "batch_size", "rollout_steps"):
            if getattr(self.data, key) < 1:
                raise ConfigError(f"data.{key}: must be >= 1, got {getattr(self.data, key)}")


def load_refine_config(path: str | None, overrides: list[str] | None = None) -> RefineRunConfig:
    return load_config(RefineRunConfig, path, overrides)


@dataclass
class Pairs:
    """Z-scored training pairs of one dataset: pred [N, C, *s], context [N, T_in, C, *s], truth [N,
    C, *s], and the rollout step of each prediction [N] (1 = the first predicted frame)."""

    pred: torch.Tensor
    context: torch.Tensor
    truth: torch.Tensor
    step: torch.Tensor

    def __len__(self) -> int:
        return self.pred.shape[0]


@torch.no_grad()
def collect_pairs(
    pm,
    shards: str | Path,
    split: str,
    n_windows: int,
    batch_size: int = 32,
    source: str = "ar",
    rollout_steps: int = 1,
) -> dict[str, Pairs]:
    """(input, context, truth) pairs per window and rollout step, z-scored. ``source`` "ar" = the AR
    model's decoded greedy rollout of ``rollout_steps`` frames (raw, unrefined), each step paired
    with the frames before it (true context, then the model's own predictions); "persistence" = the
    last context frame repeated (an ablation: the refiner alone as a forecaster)."""
    parts: dict[str, list[tuple[torch.Tensor, ...]]] = {}
    tok = pm.tokenizer
    windows = evaluation_windows(
        shards,
        split,
        rollout_steps,
        batch_size=batch_size,
        max_windows=n_windows,
        datasets=pm.dataset_names,
    )
    for batch in windows:
        name, n_in = batch.dataset, batch.context.shape[1]
        if source == "ar":
            preds = pm.rollout(
                batch.context, rollout_steps, name, batch_size=batch_size, refine=False
            )
        else:
            preds = batch.context[:, -1:].expand(-1, rollout_steps, *batch.context.shape[2:])
        history = torch.cat([batch.context, preds.to(batch.context.dtype)], dim=1)
        for k in range(rollout_steps):
            parts.setdefault(name, []).append(
                (
                    tok.normalize(preds[:, k].float(), name),
                    tok.normalize(history[:, k : k + n_in], name),
                    tok.normalize(batch.truth[:, k], name),
                    torch.full((len(preds),), k + 1),
                )
            )
    return {name: Pairs(*(torch.cat(t) for t in zip(*chunks))) for name, chunks in parts.items()}


def _lr(step: int, cfg: RefineOptimConfig) -> float:
    return cfg.lr * lr_lambda(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)


def fit_refiner(
    refiner: Refiner,
    pairs: dict[str, Pairs],
    cfg: RefineOptimConfig,
    batch_size: int,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[tuple[int, float]]:
    """Train in place; each step draws one dataset (weighted by its pairs) and a random batch of it.
    Returns (step, loss) every ``log_every`` steps (mean over the steps since the last entry)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    names = sorted(pairs)
    weights = [len(pairs[n]) for n in names]
    decay = [p for p in refiner.parameters() if p.dim() > 1]
    no_decay = [p for p in refiner.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    refiner.train()
    history, running = [], []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        name = rng.choices(names, weights)[0]
        p = pairs[name]
        idx = torch.tensor([rng.randrange(len(p)) for _ in range(min(batch_size, len(p)))])
        refined = refiner(p.pred[idx], p.context[idx], name, p.step[idx])
        loss = torch.nn.functional.mse_loss(refined, p.truth[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(refiner.parameters(), cfg.grad_clip)
        opt.step()
        running.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history.append((step + 1, sum(running) / len(running)))
            running = []
            if log:
                log(f"refine step {step + 1}/{cfg.steps} loss {history[-1][1]:.4f}")
    return history


@torch.no_grad()
def pair_vrmse(
    refiner: Refiner, pairs: dict[str, Pairs], tokenizer, batch_size: int = 32
) -> dict[str, dict[str, float]]:
    """Mean VRMSE (physical units, over windows and fields) of the input, the refined frame and
    persistence."""
    refiner.eval()
    out = {}
    for name, p in pairs.items():
        sums = {"input": 0.0, "refined": 0.0, "persistence": 0.0}
        n = refiner.n_spatial_dims
        for i in range(0, len(p), batch_size):
            sl = slice(i, i + batch_size)
            truth = tokenizer.denormalize(p.truth[sl], name)
            frames = {
                "input": p.pred[sl],
                "refined": refiner(p.pred[sl], p.context[sl], name, p.step[sl]),
                "persistence": p.context[sl, -1],
            }
            for key, z in frames.items():
                sums[key] += float(vrmse(tokenizer.denormalize(z, name), truth, n).mean(-1).sum())
        out[name] = {k: v / len(p) for k, v in sums.items()}
    return out


def refiner_improves(scores: dict[str, dict[str, float]]) -> bool:
    """Whether refining lowers the VRMSE on held-out windows of every dataset in ``scores``
    (:func:`pair_vrmse`): rollouts use a refiner by default only then (``refiner.json``
    ``improves``). Every dataset, not the mean: a refiner fit on a few windows can help one system
    and hurt another (the quickstart's did), and the default must not make any dataset's forecast
    worse."""
    return all(v["refined"] < v["input"] for v in scores.values())


@torch.no_grad()
def rollout_gate_vrmse(
    pm, refiner: Refiner, shards: str | Path, split: str, n_windows: int, horizon: int
):
    """{dataset: {"input": raw, "refined": refined}}: VRMSE (physical units, mean over fields,
    windows and the ``horizon`` frames) of greedy rollouts without and with ``refiner`` on
    ``split``'s windows."""
    saved = pm.refiner
    pm.refiner = refiner.eval()
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    try:
        windows = evaluation_windows(
            shards, split, horizon, max_windows=n_windows, datasets=pm.dataset_names
        )
        for batch in windows:
            name, n = batch.dataset, pm.n_spatial_dims
            acc = sums.setdefault(name, {"input": 0.0, "refined": 0.0})
            for key, refine in (("input", False), ("refined", True)):
                pred = pm.rollout(batch.context, horizon, name, refine=refine)
                acc[key] += float(
                    vrmse(pred.float(), batch.truth.float(), n).mean(dim=(-1, -2)).sum()
                )
            counts[name] = counts.get(name, 0) + len(batch.context)
    finally:
        pm.refiner = saved
    return {name: {k: v / counts[name] for k, v in acc.items()} for name, acc in sums.items()}


def default_out(ckpt: str | Path) -> Path:
    path = Path(ckpt)
    return (
        path / "refiner" if path.is_dir() else Path(f"runs/refine-{time.strftime('%Y%m%d-%H%M%S')}")
    )


def run_refine(cfg: RefineRunConfig, log: Callable[[str], None] | None = print) -> Path:
    """Fit a refiner to ``cfg.ckpt``; returns the refiner directory (weights, config, metrics,
    report)."""
    validate_tree(cfg)  # a config built in code skipped load_config's validation
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out) if cfg.out else default_out(cfg.ckpt)
    pm = PhysicsModel.from_pretrained(cfg.ckpt, tokenizer=cfg.tokenizer or None, refiner=False)
    start = time.perf_counter()
    pairs = collect_pairs(
        pm,
        cfg.data.shards,
        cfg.data.split,
        cfg.data.n_windows,
        rollout_steps=cfg.data.rollout_steps,
    )
    t_pairs = time.perf_counter() - start
    if log:
        log(
            f"refine: AR predictions for {sum(len(p) for p in pairs.values())} training windows in {t_pairs:.0f} s"
        )
    val = {}
    if cfg.data.val_split and cfg.data.val_split in Manifest.load(cfg.data.shards).splits:
        val = collect_pairs(pm, cfg.data.shards, cfg.data.val_split, cfg.data.val_windows)
    datasets = {name: pm.channel_names(name) for name in pairs}
    refiner = Refiner(cfg.model, pm.n_spatial_dims, datasets)
    start = time.perf_counter()
    history = fit_refiner(refiner, pairs, cfg.train, cfg.data.batch_size, cfg.seed, log)
    t_fit = time.perf_counter() - start
    scores = {
        "train": pair_vrmse(refiner, pairs, pm.tokenizer),
        **({"valid": pair_vrmse(refiner, val, pm.tokenizer)} if val else {}),
    }
    improves = refiner_improves(scores.get("valid", scores["train"]))
    gate_split = cfg.data.val_split if val else cfg.data.split
    if improves and cfg.data.gate_horizon > 0:
        scores["rollout"] = rollout_gate_vrmse(
            pm, refiner, cfg.data.shards, gate_split, cfg.data.gate_windows, cfg.data.gate_horizon
        )
        improves = refiner_improves(scores["rollout"])
    info = {
        "ar": str(cfg.ckpt),
        "improves": bool(improves),
        "improves_split": "valid" if "valid" in scores else "train",
        "ar_sha256": state_sha256(pm.model),
        "tokenizer_fingerprint": pm.info.get("tokenizer_fingerprint"),
        "train": {
            "steps": cfg.train.steps,
            "n_windows": {k: len(v) for k, v in pairs.items()},
            "loss_history": history,
            "config": to_dict(cfg),
        },
    }
    save_refiner(refiner, out, info)
    metrics = {
        "ckpt": str(cfg.ckpt),
        "refiner": str(out),
        "n_params": sum(p.numel() for p in refiner.parameters()),
        "seconds": {"ar_predictions": round(t_pairs, 2), "fit": round(t_fit, 2)},
        "loss_history": history,
        "vrmse_next_step": scores,
        "improves": bool(improves),
        "n_windows": {k: len(v) for k, v in pairs.items()},
    }
    write_metrics(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", render_report(metrics))
    return out


def render_report(metrics: dict[str, Any]) -> str:
    hist = metrics["loss_history"]
    lines = [
        "# Refiner",
        "",
        f"Fit to `{metrics['ckpt']}`: {metrics['n_params'] / 1e3:.0f} k parameters, "
        f"{hist[-1][0]} steps in {metrics['seconds']['fit']:.0f} s (AR predictions for the training windows: "
        f"{metrics['seconds']['ar_predictions']:.0f} s). Loss {hist[0][1]:.4f} (first {hist[0][0]} steps) → "
        f"{hist[-1][1]:.4f} (last).",
        "",
        "Next-step VRMSE (mean over windows and fields; 1.0 = the spatial mean; split `rollout`: mean over a "
        "held-out rollout's frames, the gate for using the refiner by default):",
        "",
        "| split | dataset | AR decoded | AR + refiner | persistence |",
        "|---|---|---:|---:|---:|",
    ]
    for split, per in metrics["vrmse_next_step"].items():
        for name, v in per.items():
            pers = f"{v['persistence']:.4f}" if "persistence" in v else "–"
            lines.append(f"| {split} | {name} | {v['input']:.4f} | {v['refined']:.4f} | {pers} |")
    return "\n".join(lines) + "\n"
