"""Tokenizer training: a LightningModule over the shard loader, and ``train_tokenizer(config) ->
Path``.

Loss: reconstruction error on z-scored fields (the loader normalises per channel with the manifest
stats): ``mse`` (plain), or ``vmse`` (MSE divided by each sample-frame-field's spatial variance,
i.e. VRMSE², the metric we report), plus optional gradient (finite-difference) and spectral (FFT
amplitude) terms. A conditional tokenizer (``model.conditional``) is trained teacher-forced on crops
of >= 2 frames: the crop's first frame as a key frame, each later frame coded and decoded given the
true previous frame, all in the same loss. AdamW with linear warm-up then cosine decay; when
``trainer.max_time_s`` is set the schedule follows whichever of steps or wall-clock is further
along, so a time-boxed run (quickstart, bench) still anneals. Logs go to CSV and to wandb in offline
mode. The checkpoint (safetensors + JSON, see ``checkpoint.py``) is written at the end and every
``trainer.ckpt_every`` steps; Lightning's own pickled checkpoints are off.

Adding a dataset to a trained tokenizer: ``init.from_ckpt=RUN`` loads it, registers datasets of the
new shards it lacks, and with ``init.freeze_trunk=true init.freeze_known_datasets=true`` trains only
the new stems/heads, leaving every earlier dataset's tokens and reconstructions unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch

from data_pipelines.clips import window_option
from data_pipelines.config import ConfigError, check_optimizer
from data_pipelines.manifest import Manifest
from tokenizer.model import Tokenizer, TokenizerConfig


@dataclass
class DataConfig:
    shards: str = ""  # shard directory (physfm data shard --out)
    batch_size: int = 8
    num_workers: int = 0
    dataset_weights: dict[str, float] | None = None  # default: proportional to sample counts
    val_batches: int = 4  # validation batches per check (0 = no validation)
    # Train on a random run of this many consecutive frames of each window (0 = the whole window):
    # neighbouring frames are nearly redundant, so short crops of more windows learn faster per
    # CPU-second.
    train_frames: int = 0
    # Windows cut from clip shards: [n_input, n_output] or [n_input, n_output, stride]; [] = the
    # shards' default.
    window: list[int] = field(default_factory=list)


@dataclass
class LossConfig:
    kind: Literal["mse", "vmse"] = "mse"
    # added to the (z-scored) variance: near-uniform frames must not dominate
    vmse_eps: float = 1e-2
    gradient_weight: float = 0.0  # weight of the MSE between spatial finite differences
    spectral_weight: float = 0.0  # weight of the MSE between FFT amplitudes (per frame, per field)


@dataclass
class TrainerConfig:
    max_steps: int = 300
    max_time_s: float = 0.0  # wall-clock budget in seconds; 0 = none
    lr: float = 2e-3
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 10
    val_every: int = 0  # steps between validations; 0 = only at the end
    ckpt_every: int = 0  # steps between checkpoint saves; 0 = only at the end
    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"
    wandb: bool = True  # offline wandb run under OUT/wandb (besides the CSV log)
    num_threads: int = 0  # torch intra-op threads; 0 = torch's default
    verbose: bool = True  # a progress line every log_every steps

    def validate(self) -> None:
        check_optimizer(self, "trainer")
        if self.max_steps < 1:
            raise ConfigError(f"trainer.max_steps: must be >= 1, got {self.max_steps}")


@dataclass
class InitConfig:
    from_ckpt: str = ""  # start from this tokenizer checkpoint (or run directory)
    freeze_trunk: bool = False  # train only per-dataset stems/heads
    freeze_known_datasets: bool = False  # also keep the checkpoint's own stems/heads fixed
    # turn on the checkpoint's skip decisions (model.skip_coding; conditional tokenizers only): they
    # act at encode time, so training is the same, but the saved tokenizer codes with them
    skip_coding: bool = False


@dataclass
class TokenizerTrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    init: InitConfig = field(default_factory=InitConfig)
    seed: int = 0
    out: str = ""  # run directory; default runs/tokenizer-<timestamp>

    def validate(self) -> None:
        if self.data.batch_size < 1:
            raise ConfigError(f"data.batch_size: must be >= 1, got {self.data.batch_size}")
        window_option(self.data.window, "data.window")
        if self.data.train_frames < 0:
            raise ConfigError(f"data.train_frames: must be >= 0, got {self.data.train_frames}")
        if self.model.conditional and self.data.train_frames == 1:
            raise ConfigError(
                "data.train_frames: a conditional tokenizer (model.conditional) trains on >= 2 frames "
                "(a key frame and a frame coded given it), got 1"
            )


# ----------------------------------------------------------------------------------------------
# loss
def reconstruction_loss(
    recon: torch.Tensor, true: torch.Tensor, cfg: LossConfig, n_spatial_dims: int
) -> torch.Tensor:
    """recon, true: [B, T, C, *space] (z-scored) → scalar loss."""
    space = tuple(range(-n_spatial_dims, 0))
    err = (recon - true) ** 2
    if cfg.kind == "vmse":
        var = true.var(dim=space, keepdim=True)  # per sample, frame and field, like VRMSE
        loss = (err / (var + cfg.vmse_eps)).mean()
    else:
        loss = err.mean()
    if cfg.gradient_weight > 0:
        for axis in space:
            loss = (
                loss
                + cfg.gradient_weight * ((recon.diff(dim=axis) - true.diff(dim=axis)) ** 2).mean()
            )
    if cfg.spectral_weight > 0:
        amp_r = torch.fft.rfftn(recon.float(), dim=space, norm="ortho").abs()
        amp_t = torch.fft.rfftn(true.float(), dim=space, norm="ortho").abs()
        loss = loss + cfg.spectral_weight * ((amp_r - amp_t) ** 2).mean()
    return loss


def lr_factor(step: int, elapsed_s: float, cfg: TrainerConfig) -> float:
    """Linear warm-up, then cosine to ``min_lr_ratio``; progress = max(step fraction, time
    fraction)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.max_time_s > 0:
        progress = max(progress, elapsed_s / cfg.max_time_s)
    progress = min(1.0, progress)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# module
def _lightning():
    import lightning.pytorch as pl

    return pl


class TokenizerModule(_lightning().LightningModule):
    """Trains a :class:`Tokenizer` on batches ``{"input", "output", "dataset"}`` from
    ``make_loader``."""

    def __init__(self, model: Tokenizer, cfg: TokenizerTrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        self._t0 = time.monotonic()
        self._val: dict[str, list[torch.Tensor]] = {}

    @staticmethod
    def window(batch: dict[str, Any]) -> torch.Tensor:
        """Input and output frames of a window together: [B, T_in + T_out, C, *space]."""
        return torch.cat([batch["input"], batch["output"]], dim=1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = self.window(batch)
        n_crop = self.cfg.data.train_frames
        if 0 < n_crop < x.shape[1]:
            start = int(torch.randint(0, x.shape[1] - n_crop + 1, ()))
            x = x[:, start : start + n_crop]
        recon, ids = self.model(x, batch["dataset"])
        loss = reconstruction_loss(recon, x, self.cfg.loss, self.model.cfg.n_spatial_dims)
        usage = ids.unique().numel() / self.model.fsq.codebook_size
        self.log_dict(
            {
                "train/loss": loss,
                "train/batch_code_usage": usage,
                f"train/loss_{batch['dataset']}": loss,
            },
            batch_size=x.shape[0],
        )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from tokenizer.metrics import vrmse

        x = self.window(batch)
        recon, _ = self.model(x, batch["dataset"])
        per_field = vrmse(recon, x, self.model.cfg.n_spatial_dims).flatten(0, 1).mean(0)  # [C]
        self._val.setdefault(batch["dataset"], []).append(per_field.cpu())

    def on_validation_epoch_end(self) -> None:
        worst = 0.0
        for name, values in self._val.items():
            per_field = torch.stack(values).mean(0)
            for channel, value in zip(self.model.datasets[name].channel_names, per_field.tolist()):
                self.log(f"val/vrmse_{name}_{channel}", value)
                worst = max(worst, value)
        self.log("val/vrmse_max", worst)
        self._val = {}

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("nothing to train: the trunk and every dataset head are frozen")
        decay = [p for p in params if p.ndim > 1]  # conv kernels; not biases or norm scales
        no_decay = [p for p in params if p.ndim <= 1]
        tcfg = self.cfg.trainer
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": tcfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=tcfg.lr,
            betas=(0.9, 0.99),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, time.monotonic() - self._t0, tcfg)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        self._t0 = time.monotonic()


class _Progress(_lightning().Callback):
    """One readable line every ``log_every`` steps, and periodic checkpoint saves."""

    def __init__(self, cfg: TokenizerTrainConfig, ckpt_dir: Path):
        self.cfg, self.ckpt_dir = cfg, ckpt_dir
        self.t0 = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        tcfg = self.cfg.trainer
        if tcfg.verbose and (step % tcfg.log_every == 0 or step == 1):
            loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            print(
                f"[tokenizer] step {step:5d}  loss {loss:.4f}  lr {lr:.2e}  "
                f"{batch['dataset']}  {time.monotonic() - self.t0:6.1f}s",
                flush=True,
            )
        if tcfg.ckpt_every and step % tcfg.ckpt_every == 0:
            _save(module.model, self.ckpt_dir, self.cfg, step)


def _save(model: Tokenizer, ckpt_dir: Path, cfg: TokenizerTrainConfig, step: int) -> Path:
    from data_pipelines.config import to_dict
    from tokenizer.checkpoint import save_tokenizer

    return save_tokenizer(model, ckpt_dir, extra={"step": step, "config": to_dict(cfg)})


# ----------------------------------------------------------------------------------------------
# entry point
def mixed_dims_message(dims: dict[str, int]) -> str:
    """Why a shard set of several dimensionalities cannot train one tokenizer, and what to train
    on."""
    by_dim = {d: sorted(n for n, k in dims.items() if k == d) for d in sorted(set(dims.values()))}
    listed = "; ".join(f"{d}D: {', '.join(names)}" for d, names in by_dim.items())
    return (
        f"the shards mix dimensionalities ({listed}); one tokenizer codes one dimensionality (its conv trunk "
        "is 1D, 2D or 3D), so train one per dimensionality on a shard set of that dimensionality only "
        "(`physfm corpus` writes them as OUT/shards-1d, -2d, -3d)"
    )


def build_tokenizer(cfg: TokenizerTrainConfig, manifest: Manifest) -> Tokenizer:
    """A fresh or checkpoint-initialised tokenizer with a stem/head for every dataset in
    ``manifest``."""
    datasets = manifest.datasets
    dims = {name: len(entry.spatial_shape or ()) for name, entry in datasets.items()}
    model_cfg = cfg.model
    known: list[str] = []  # datasets the checkpoint already had
    if cfg.init.from_ckpt:
        from tokenizer.checkpoint import load_tokenizer

        model = load_tokenizer(cfg.init.from_ckpt).train()
        model_cfg, known = model.cfg, list(model.datasets)
        if cfg.init.skip_coding:
            if not model_cfg.conditional:
                raise ConfigError(
                    f"init.skip_coding: {cfg.init.from_ckpt} is a plain tokenizer; skip decisions need "
                    "a conditional one (model.conditional)"
                )
            model_cfg.skip_coding = True
        cfg.model = model_cfg  # the run records the architecture it trained, not the config's
    else:
        if model_cfg.n_spatial_dims == 0:
            if len(set(dims.values())) > 1:
                raise ConfigError(f"data.shards: {mixed_dims_message(dims)}")
            model_cfg.n_spatial_dims = next(iter(dims.values()))
        model = Tokenizer(model_cfg)
    for name, entry in datasets.items():
        if dims[name] != model_cfg.n_spatial_dims:
            raise ConfigError(
                f"model.n_spatial_dims={model_cfg.n_spatial_dims} but dataset {name!r} is {dims[name]}D; "
                + mixed_dims_message(dims)
            )
        bad = [s for s in entry.spatial_shape or () if s % model_cfg.spatial_compression]
        if bad:
            raise ConfigError(
                f"model.spatial_compression={model_cfg.spatial_compression} does not divide dataset "
                f"{name!r}'s spatial shape {list(entry.spatial_shape or ())}"
            )
        stats = entry.stats
        std = [s if s > 0 else 1.0 for s in stats["std"]]  # as the loader's Normalizer does
        if name in model.datasets:
            have = model.datasets[name].channel_names
            if have != entry.channel_names:
                raise ConfigError(
                    f"dataset {name!r}: channels {entry.channel_names} differ from the checkpoint's {have}"
                )
        else:
            model.add_dataset(name, entry.channel_names, mean=list(stats["mean"]), std=std)
    if cfg.init.freeze_trunk:
        model.freeze_trunk()
    if cfg.init.freeze_known_datasets:
        model.freeze_datasets(known)
    return model


def train_tokenizer(cfg: TokenizerTrainConfig) -> Path:
    """Train (or extend) a tokenizer on ``cfg.data.shards``; returns the checkpoint directory."""
    if not cfg.data.shards:
        raise ConfigError("data.shards: required (a directory written by `physfm data shard`)")
    Manifest.load(cfg.data.shards)  # fail on a wrong path before creating the run directory
    out = Path(cfg.out or f"runs/tokenizer-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoint"
    threads_before = torch.get_num_threads()
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    try:
        return _train(cfg, out, ckpt_dir)
    finally:
        # a library call should not leave the process single-threaded
        torch.set_num_threads(threads_before)


def _train(cfg: TokenizerTrainConfig, out: Path, ckpt_dir: Path) -> Path:
    """The body of :func:`train_tokenizer` (thread count already set)."""
    import lightning.pytorch as pl

    from data_pipelines.config import to_dict

    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # Lightning's start-up banners (GPU/TPU available, tips) are noise in a CLI run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    manifest = Manifest.load(cfg.data.shards)
    model = build_tokenizer(cfg, manifest)
    _write_yaml(out / "config.yaml", to_dict(cfg))

    train_loader, val_loader = _loaders(cfg, manifest)
    loggers = _loggers(cfg, out)
    module = TokenizerModule(model, cfg)
    tcfg = cfg.trainer
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_steps=tcfg.max_steps,
            max_epochs=-1,
            max_time={"seconds": tcfg.max_time_s} if tcfg.max_time_s > 0 else None,
            accelerator=tcfg.accelerator,
            devices=tcfg.devices,
            precision=tcfg.precision,
            gradient_clip_val=tcfg.grad_clip or None,
            logger=loggers,
            log_every_n_steps=tcfg.log_every,
            val_check_interval=tcfg.val_every
            if (val_loader is not None and tcfg.val_every)
            else None,
            check_val_every_n_epoch=None if (val_loader is not None and tcfg.val_every) else 1,
            limit_val_batches=cfg.data.val_batches if val_loader is not None else 0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[_Progress(cfg, ckpt_dir)],
            deterministic=False,
        )
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    path = _save(model.cpu(), ckpt_dir, cfg, trainer.global_step)
    if cfg.trainer.wandb:
        import wandb

        wandb.finish()
    return path


def _loaders(cfg: TokenizerTrainConfig, manifest: Manifest):
    """The resampled train loader, and the valid one (None without valid shards or batches)."""
    from data_pipelines.loader import make_loader

    common = dict(
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        resampled=True,
        dataset_weights=cfg.data.dataset_weights,
        window=window_option(cfg.data.window, "data.window"),
    )
    train_loader = make_loader(
        cfg.data.shards,
        "train",
        cfg.data.batch_size,
        batches_per_epoch=cfg.trainer.max_steps,
        **common,
    )
    val_loader = None
    if cfg.data.val_batches > 0 and "valid" in manifest.splits and manifest.splits["valid"].shards:
        # A fixed resampled draw mixes every dataset and is the same at each check.
        val_loader = make_loader(
            cfg.data.shards,
            "valid",
            cfg.data.batch_size,
            batches_per_epoch=cfg.data.val_batches,
            **{**common, "seed": cfg.seed + 1},
        )
    return train_loader, val_loader


def _loggers(cfg: TokenizerTrainConfig, out: Path) -> list[Any]:
    """CSV logs under ``out/logs``, and an offline wandb run when asked for."""
    from lightning.pytorch.loggers import CSVLogger

    from data_pipelines.config import to_dict

    loggers: list[Any] = [CSVLogger(str(out), name="logs", version="")]
    if cfg.trainer.wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                project="physfm-tokenizer", save_dir=str(out), offline=True, config=to_dict(cfg)
            )
        )
    return loggers


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning warnings that are expected here (streaming loader, no val loader, srun on
    PATH)."""
    with warnings.catch_warnings():
        for message in (
            ".*does not have many workers.*",
            ".*IterableDataset.*__len__.*",
            ".*max_time.*",
            ".*`srun` command is available.*",
            ".*validation_step.*no `val_dataloader`.*",
            r".*isinstance\(treespec, LeafSpec\).*",
        ):
            warnings.filterwarnings("ignore", message=message)
        yield


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    from data_pipelines.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
