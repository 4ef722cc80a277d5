"""``physfm finetune``: adapt a pretrained AR model to a new simulation (new fields, resolution, 1D,
2D or 3D; a 3D dataset on a 2D-pretrained model gets the tokenizer inflated to 3D).

Steps, each skipped when an earlier segment of the same run already finished it (so a requeued or
resumed run continues where it stopped, and the AR stage resumes bit for bit via ``resume: auto``):

1. data: a raw The Well directory is validated and sharded into ``RUN/shards``
   (``physfm/train/finetune_data.py``);
2. tokenizer: datasets the pretrained tokenizer lacks get a new stem/head, trained with the shared
   trunk and every known dataset frozen (``tokenizer.training``, ``init.freeze_*``) →
   ``RUN/tokenizer``; the windows are encoded with it → ``RUN/tokens``;
3. AR model: :func:`physfm.train.pretrain.run_pretrain` from the pretrained weights (same
   strategies: ddp, DeepSpeed), dataset vocabulary = pretrained names + new names; ``finetune.mode``
   = full, freeze (all but the last k blocks) or lora (``physfm/models/lora.py``); per-part
   learning rates and a frozen-trunk warm-up (``physfm/train/param_groups.py``), the
   lowest-validation-loss checkpoint and early stopping (``physfm/train/finetune_select.py``);
4. selection and evaluation: ``RUN/model`` = the better of fine-tuned and zero-shot on the valid
   split (``finetune.keep_better``); on the test split: it, the pretrained weights before
   fine-tuning, persistence and, with ``compare_scratch``, the same budget trained from random
   init → ``report.md``, ``metrics.json``, ``vrmse_vs_horizon.png``.

In a multi-process launch (torchrun, srun) every rank runs this; steps 1-2 and 4 are rank 0's alone.
No process group exists before step 3 (Lightning makes it), so the other ranks wait for rank 0's
handshake file ``RUN/.prepared.json`` (the run directory is on a filesystem every rank sees, as for
checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_pipelines.atomic import atomic_write_text
from data_pipelines.config import ConfigError, load_config, to_dict
from data_pipelines.errors import DataError
from data_pipelines.manifest import Manifest
from physfm.core.checkpoint import export_safetensors
from physfm.core.run_info import RunInfo
from physfm.inference.loading import _tokenizer_location, load_model_state, resolve_checkpoint
from physfm.models import lora
from physfm.models.ar import PhysicsTransformer
from physfm.models.lora import count_trainable, merge_lora_state
from physfm.models.trunk import ModelConfig, with_spatial_axes
from physfm.train.config import PretrainConfig, TokenDataConfig, default_run_dir
from physfm.train.data import token_layout
from physfm.train.distributed import global_rank, is_rank_zero, launch_id, single_process_env
from physfm.train.finetune_data import data_spatial_dims, prepare_shards
from physfm.train.finetune_eval import evaluate_models, write_report
from physfm.train.finetune_select import (
    best_checkpoint,
    best_step,
    compare_on_validation,
    selection_callbacks,
)
from physfm.train.param_groups import ParamPlan
from physfm.train.pretrain import run_pretrain
from tokenizer.checkpoint import find_checkpoint as find_tokenizer_checkpoint
from tokenizer.checkpoint import fingerprint, read_tokenizer_spec
from tokenizer.checkpoint import resolve_checkpoint as resolve_tokenizer_checkpoint
from tokenizer.encode import encode_shards
from tokenizer.inflate import inflate_checkpoint
from tokenizer.model import DatasetSpec, TokenizerConfig, field_frames
from tokenizer.training import TokenizerTrainConfig, train_tokenizer


@dataclass
class FinetuneSection:
    init: str = ""  # the pretrained model: run directory, checkpoint or export (--ckpt)
    data: str = ""  # raw The Well dataset directory or field shard directory (--data)
    mode: Literal["full", "freeze", "lora"] = "full"
    # mode=freeze: blocks trained (plus final norm, output head, dataset embedding)
    train_last_blocks: int = 1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    tokenizer_steps: int = 150  # new stem/head training steps (trunk frozen)
    tokenizer_lr: float = 3e-3
    tokenizer_batch_size: int = 8
    # 1D data on a 2D tokenizer: cells of the added axis (0 = the tokenizer's spatial compression)
    lift: int = 0
    # the tokenizer's shared trunk while the new stems/heads train: "frozen" keeps the pretrained
    # datasets' tokens; "trained" adapts it too; "auto" trains it only when it was inflated to more
    # spatial axes (it codes none of the pretrained datasets then, and on gray_scott3d 32^3 a trained
    # inflated trunk reached VRMSE 0.178 after 600 steps against 0.251 frozen: README)
    tokenizer_trunk: Literal["auto", "frozen", "trained"] = "auto"
    # skip decisions in the adapted tokenizer (tokenizer model.skip_coding): a token keeps "no
    # change" where that codes the new data better than the encoder's code, so the one-step ceiling
    # is never above persistence. "auto": whenever the tokenizer is conditional; "always": and
    # refuse a plain one; "never": the encoder's codes as they are.
    skip_coding: Literal["auto", "always", "never"] = "never"
    eval_horizons: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    eval_max_windows: int = 16  # test windows per dataset
    compare_scratch: bool = False  # also train the same budget from random init
    # The recipe (configs/finetune/recipe.yaml; physfm/train/param_groups.py). The new parts (the
    # new dataset's conditioning row, LoRA adapters) learn at optim.lr, the pretrained trunk at
    # optim.lr * trunk_lr_scale, after frozen_warmup_steps steps in which only the new parts learn.
    trunk_lr_scale: float = 1.0
    frozen_warmup_steps: int = 0
    # Stop after this many validation runs (every trainer.val_every steps) without a lower
    # validation loss; 0: never stop early. Whenever the run validates, the checkpoint with the
    # lowest validation loss is the fine-tuned model (physfm/train/finetune_select.py).
    patience: int = 0
    # RUN/model = the zero-shot weights when fine-tuning did not lower the validation split's h=1
    # VRMSE (false: always the fine-tuned weights).
    keep_better: bool = True

    def validate(self) -> None:
        if self.trunk_lr_scale < 0:
            raise ConfigError(f"finetune.trunk_lr_scale: must be >= 0, got {self.trunk_lr_scale}")
        for name in ("frozen_warmup_steps", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"finetune.{name}: must be >= 0, got {getattr(self, name)}")
        if self.tokenizer_steps < 1:
            raise ConfigError(f"finetune.tokenizer_steps: must be >= 1, got {self.tokenizer_steps}")
        if self.lora_rank < 1:
            raise ConfigError(f"finetune.lora_rank: must be >= 1, got {self.lora_rank}")
        if not self.eval_horizons or min(self.eval_horizons) < 1:
            raise ConfigError(
                f"finetune.eval_horizons: need positive integers, got {self.eval_horizons}"
            )


@dataclass
class FinetuneDataConfig(TokenDataConfig):
    """``data``: as pretraining's, but ``tokens`` is made by the fine-tune itself
    (``RUN/tokens``)."""

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: must be >= 1, got {self.batch_size}")


@dataclass
class FinetuneConfig(PretrainConfig):
    """A pretrain config (data/optim/trainer/strategy sections) plus ``finetune``; ``model`` and
    ``tokenizer`` come from the pretrained run, ``data.tokens`` from step 2."""

    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    def validate(self) -> None:
        """Across sections (each section validates itself: data_pipelines.config.validate_tree);
        unlike pretraining, ``data.tokens`` and ``tokenizer`` are made here."""
        f = self.finetune
        if f.frozen_warmup_steps >= self.trainer.max_steps:
            raise ConfigError(
                f"finetune.frozen_warmup_steps: {f.frozen_warmup_steps} leaves no step of "
                f"trainer.max_steps={self.trainer.max_steps} for the trunk; lower it"
            )
        if f.patience and not self.data.val_batches:
            raise ConfigError(
                f"finetune.patience: early stopping ({f.patience}) needs validation runs; "
                "set data.val_batches > 0"
            )


def load_finetune_config(path: str | None, overrides: list[str] | None = None) -> FinetuneConfig:
    return load_config(FinetuneConfig, path, overrides)


# ----------------------------------------------------------------------------------------------
# steps
def pretrained_tokenizer_path(info: dict[str, Any], run_dir: Path) -> Path:
    return _tokenizer_location(info, run_dir)


def adapt_tokenizer(
    cfg: FinetuneConfig,
    base_tokenizer: Path,
    known: dict[str, DatasetSpec],
    shards: Path,
    manifest: Manifest,
    out: Path,
) -> Path:
    """The pretrained tokenizer itself when it knows every dataset; else one with new stems/heads.
    ``known``: the pretrained tokenizer's datasets (read from its config; its weights are loaded
    once, by whichever step uses them). Data with more spatial axes than the tokenizer first gets
    the tokenizer inflated to them (``tokenizer/inflate.py``) → ``RUN/tokenizer_inflated``; the new
    stems/heads are then trained on the inflated trunk."""
    pretrained_tokenizer = base_tokenizer
    base_tokenizer = inflate_for_data(base_tokenizer, shards, manifest, out)
    new = [n for n in manifest.datasets if n not in known]
    for name, entry in manifest.datasets.items():
        if name in known and known[name].channel_names != entry.channel_names:
            raise ConfigError(
                f"dataset {name!r}: channels {entry.channel_names} differ from "
                f"the pretrained tokenizer's {known[name].channel_names}; rename the dataset"
            )
    if not new:
        return resolve_tokenizer_checkpoint(base_tokenizer)
    target = out / "tokenizer"
    earlier = find_tokenizer_checkpoint(target)  # adapted by an earlier segment of this run
    if earlier is not None:
        return earlier
    f = cfg.finetune
    tcfg = TokenizerTrainConfig()
    tcfg.data.shards, tcfg.data.batch_size, tcfg.data.val_batches = (
        str(shards),
        f.tokenizer_batch_size,
        0,
    )
    tcfg.init.from_ckpt, tcfg.init.freeze_trunk, tcfg.init.freeze_known_datasets = (
        str(base_tokenizer),
        not train_tokenizer_trunk(f, inflated=base_tokenizer != pretrained_tokenizer),
        True,
    )
    conditional = read_tokenizer_spec(base_tokenizer)[0].conditional
    if f.skip_coding == "always" and not conditional:
        raise ConfigError(
            f"finetune.skip_coding=always: the pretrained tokenizer {pretrained_tokenizer} is plain; "
            "skip decisions need a conditional one (use auto or never)"
        )
    tcfg.init.skip_coding = f.skip_coding != "never" and conditional
    tcfg.trainer.max_steps, tcfg.trainer.lr = f.tokenizer_steps, f.tokenizer_lr
    tcfg.trainer.warmup_steps = min(10, f.tokenizer_steps)
    tcfg.trainer.wandb, tcfg.trainer.verbose, tcfg.seed = False, False, cfg.seed
    tcfg.out = str(target)
    return train_tokenizer(tcfg)


def train_tokenizer_trunk(f: FinetuneSection, inflated: bool) -> bool:
    """Whether the tokenizer's shared trunk trains with the new stems/heads
    (``finetune.tokenizer_trunk``)."""
    return f.tokenizer_trunk == "trained" or (f.tokenizer_trunk == "auto" and inflated)


def inflate_for_data(base_tokenizer: Path, shards: Path, manifest: Manifest, out: Path) -> Path:
    """``base_tokenizer``, or its inflation to the data's spatial axes when the data has more
    (kept from an earlier segment of this run when already written)."""
    tok_dims = read_tokenizer_spec(base_tokenizer)[0].n_spatial_dims
    dims = data_spatial_dims(shards, manifest)
    if dims <= tok_dims:
        return base_tokenizer
    target = out / "tokenizer_inflated"
    earlier = find_tokenizer_checkpoint(target)
    if earlier is not None and read_tokenizer_spec(earlier)[0].n_spatial_dims == dims:
        return earlier
    return inflate_checkpoint(base_tokenizer, target, dims)


def encode_tokens(tokenizer: Path, shards: Path, out: Path) -> Path:
    """``RUN/tokens`` encoded by ``tokenizer`` (kept when an earlier segment encoded them with
    it)."""
    tokens = out / "tokens"
    if (tokens / "manifest.json").is_file() and Manifest.load(tokens).fingerprint == fingerprint(
        tokenizer
    ):
        return tokens
    return encode_shards(tokenizer, shards, tokens)


def init_dataset_rows(state: dict[str, Any], n_known: int, n_total: int) -> dict[str, Any]:
    """New datasets' conditioning rows start at the mean of the pretrained ones (a "typical
    dataset")."""
    table = state["dataset_embedding.weight"].clone()
    if n_total > table.shape[0]:
        raise ConfigError(
            f"model.n_datasets={table.shape[0]} has no free id for {n_total} datasets"
        )
    table[n_known:n_total] = table[:n_known].mean(0, keepdim=True)
    return {**state, "dataset_embedding.weight": table}


def prepare_fn(f: FinetuneSection):
    """What run_pretrain applies to the model after loading the pretrained weights."""
    if f.mode == "freeze":
        return lambda model: lora.freeze_all_but_last(model, f.train_last_blocks)
    if f.mode == "lora":
        return lambda model: lora.add_lora(model, f.lora_rank, f.lora_alpha, f.lora_dropout)
    return None


def param_plan_fn(f: FinetuneSection, pretrained: dict[str, Any]):
    """What run_pretrain builds the optimiser's per-part plan with, from the prepared model."""
    return lambda model: ParamPlan.for_model(
        model, pretrained, f.trunk_lr_scale, f.frozen_warmup_steps
    )


def export_plain(run: Path, out_dir: Path, f: FinetuneSection | None) -> Path:
    """The run's selected weights (its lowest-validation-loss checkpoint when it validated, else
    its newest; LoRA merged) as an export any loader reads."""
    state, info = load_model_state(best_checkpoint(run) or run)
    if f is not None and f.mode == "lora":
        state = merge_lora_state(state, f.lora_alpha / f.lora_rank)
    info = {k: v for k, v in info.items() if k != "checkpoint"}
    return export_safetensors(state, info, out_dir)


def _training_config(
    cfg: FinetuneConfig,
    model: ModelConfig,
    tokenizer: Path,
    tokens: Path,
    out: Path,
    max_steps: int | None = None,
) -> PretrainConfig:
    manifest = Manifest.load(tokens)
    layout = token_layout(manifest)
    grid = layout.grid or next(iter(manifest.datasets.values())).token_grid[1:]
    model_cfg = dataclasses.replace(
        with_spatial_axes(model, len(grid)),
        grid_shape=list(grid),
        max_frames=max(model.max_frames, layout.n_frames),
    )
    base = {
        k: getattr(cfg, k) for k in ("seed", "resume", "optim", "trainer", "strategy", "diffusion")
    }
    train = PretrainConfig(
        **base,
        out=str(out),
        tokenizer=str(tokenizer.resolve()),
        model=model_cfg,
        data=TokenDataConfig(**{**to_dict(cfg.data), "tokens": [str(tokens)]}),
    )
    if max_steps is not None:
        train.trainer = type(cfg.trainer)(**{**to_dict(cfg.trainer), "max_steps": max_steps})
    return train


# ----------------------------------------------------------------------------------------------
# entry point
@dataclass
class Pretrained:
    """The model a fine-tune starts from, and its tokenizer's config and datasets (its weights are
    loaded only by the step that codes with them: tokenizer adaptation or encoding)."""

    state: dict[str, Any]
    info: dict[str, Any]
    tokenizer_path: Path
    tokenizer_cfg: TokenizerConfig
    tokenizer_datasets: dict[str, DatasetSpec]

    @classmethod
    def load(cls, init: str) -> Pretrained:
        state, info = load_model_state(init)
        if info.get("kind", "ar") != "ar":
            raise ConfigError(
                f"--ckpt {init}: a {info['kind']!r} model; fine-tuning supports AR models"
            )
        _, run_dir = resolve_checkpoint(init)
        path = pretrained_tokenizer_path(info, run_dir)
        return cls(state, info, path, *read_tokenizer_spec(path))

    def window(self) -> tuple[int, int]:
        """(input, output) field frames of the pretrained model's token windows."""
        c = self.tokenizer_cfg.temporal_compression
        n_input = field_frames(int(self.info["n_context_frames"]), c)
        return n_input, field_frames(int(self.info["n_frames"]), c) - n_input


def prepare_data(
    cfg: FinetuneConfig, out: Path, base: Pretrained, timings: dict[str, float]
) -> dict[str, Any]:
    """Steps 1-2 (rank 0): field shards of ``--data``, the adapted tokenizer, the tokens."""
    f, tok_cfg = cfg.finetune, base.tokenizer_cfg
    n_input, n_output = base.window()
    start = time.perf_counter()
    shards, manifest = prepare_shards(
        f.data,
        out,
        n_input,
        max(1, n_output),
        tok_cfg.n_spatial_dims,
        f.lift or tok_cfg.spatial_compression,
    )
    timings["data_s"] = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = adapt_tokenizer(
        cfg, base.tokenizer_path, base.tokenizer_datasets, shards, manifest, out
    )
    tokens = encode_tokens(tokenizer, shards, out)
    timings["tokenizer_s"] = time.perf_counter() - start
    return {
        "shards": str(shards),
        "tokenizer": str(tokenizer),
        "tokens": str(tokens),
        "datasets": list(manifest.datasets),
    }


def run_finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune, evaluate, report; returns the run directory."""
    f = cfg.finetune
    if not f.init or not f.data:
        raise ConfigError("finetune.init (--ckpt) and finetune.data (--data) are both required")
    out = Path(cfg.out or default_run_dir("finetune"))
    base = Pretrained.load(f.init)
    timings: dict[str, float] = {}
    prepared = prepare_on_rank_zero(out, lambda: prepare_data(cfg, out, base, timings))
    shards, tokenizer, tokens = (
        Path(prepared["shards"]),
        Path(prepared["tokenizer"]),
        Path(prepared["tokens"]),
    )
    new_data = prepared["datasets"]  # the datasets of --data

    old_names = list(base.info["dataset_names"])
    names = old_names + sorted(n for n in new_data if n not in old_names)
    state = init_dataset_rows(base.state, len(old_names), len(names))
    pretrained = RunInfo.from_dict(base.info, f.init).model
    train_cfg = _training_config(cfg, pretrained, tokenizer, tokens, out)
    validates = cfg.data.val_batches > 0
    start = time.perf_counter()
    run_pretrain(
        train_cfg,
        init_weights={
            "state_dict": state,
            "dataset_names": names,
            "prepare": prepare_fn(f),
            "param_plan": param_plan_fn(f, state),
        },
        callbacks=selection_callbacks(out, f.patience, validates),
    )
    timings["finetune_s"] = time.perf_counter() - start
    if f.compare_scratch:  # every rank trains; rank 0 scores below
        # the same budget, best-checkpoint keeping and early stopping: only the start differs
        scratch_cfg = _training_config(cfg, pretrained, tokenizer, tokens, out / "scratch")
        start = time.perf_counter()
        run_pretrain(
            scratch_cfg,
            init_weights={"dataset_names": names},
            callbacks=selection_callbacks(out / "scratch", f.patience, validates),
        )
        timings["scratch_s"] = time.perf_counter() - start
    if not is_rank_zero():
        return out
    report = {
        "shards": shards,
        "tokenizer": tokenizer,
        "names": names,
        "new_data": new_data,
        "timings": timings,
    }
    report["model"] = pretrained
    evaluate_and_report(cfg, out, state, base.info, report)
    return out


def evaluate_and_report(
    cfg: FinetuneConfig, out: Path, state: dict[str, Any], info: dict[str, Any], run: dict[str, Any]
) -> None:
    """Step 4 (rank 0): keep the better of fine-tuned and zero-shot on the validation split as
    ``RUN/model``; score it, the zero-shot (and scratch) models on the test split; write the
    report."""
    f, names = cfg.finetune, run["names"]
    summary = json.loads((out / "metrics.json").read_text())
    before_info = RunInfo.read(out).to_dict()
    new_names = [n for n in names if n in run["new_data"]]
    trained = export_plain(out, out / "model_trained", f)
    before = _export_state(state, before_info, out / "model_before")
    selection = {"split": None, "kept": "finetuned"}
    if f.keep_better:
        selection = compare_on_validation(
            trained, before, Path(run["shards"]), new_names, f.eval_max_windows
        )
    kept_state, _ = load_model_state(trained if selection["kept"] == "finetuned" else before)
    models = {
        "finetuned": _export_state(kept_state, before_info, out / "model"),
        "pretrained": before,
    }
    if selection["kept"] == "zeroshot":  # what fine-tuning gave, for the record
        models["finetuned_discarded"] = trained
    scratch_summary = None
    if f.compare_scratch:
        scratch_summary = json.loads((out / "scratch" / "metrics.json").read_text())
        models["scratch"] = export_plain(out / "scratch", out / "scratch" / "model", None)
    results = evaluate_models(models, run["shards"], new_names, f.eval_horizons, f.eval_max_windows)
    metrics = {
        "from": str(f.init),
        "data": str(f.data),
        "shards": str(run["shards"]),
        "tokenizer": str(run["tokenizer"]),
        "tokenizer_skip_coding": read_tokenizer_spec(run["tokenizer"])[0].skip_coding,
        "mode": f.mode,
        "datasets": new_names,
        "dataset_names": names,
        "steps": summary["steps"],
        "trainable_params": _trainable(f, run["model"]),
        "seconds": {k: round(v, 2) for k, v in run["timings"].items()},
        "train": summary,
        "scratch_train": scratch_summary,
        "recipe": {
            "trunk_lr_scale": f.trunk_lr_scale,
            "frozen_warmup_steps": f.frozen_warmup_steps,
            "patience": f.patience,
            "lr": cfg.optim.lr,
            "max_steps": cfg.trainer.max_steps,
            "val_every": cfg.trainer.val_every,
        },
        "best_step": best_step(out),
        "stopped_early": summary["steps"] < cfg.trainer.max_steps,
        "kept": selection["kept"],
        "selection": selection,
        **results,
    }
    write_report(out, metrics)


PREPARED = ".prepared.json"


def prepare_on_rank_zero(out: Path, prepare, timeout_s: float | None = None) -> dict[str, Any]:
    """Rank 0 runs ``prepare()`` (single-process) and publishes its JSON-able result in
    ``out/.prepared.json``; every other rank waits for that file from this launch and returns the
    same result. A failure on rank 0 is published too, so the others stop with a named error instead
    of waiting out the timeout (``PHYSFM_PREPARE_TIMEOUT_S``, default 2 h: adapting a large
    tokenizer takes a while)."""
    marker, launch = out / PREPARED, launch_id()
    if global_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        try:
            with single_process_env():
                result = prepare()
        except BaseException as err:
            atomic_write_text(
                marker, json.dumps({"launch": launch, "error": f"{type(err).__name__}: {err}"})
            )
            raise
        atomic_write_text(marker, json.dumps({"launch": launch, "result": result}))
        return result
    timeout_s = (
        float(os.environ.get("PHYSFM_PREPARE_TIMEOUT_S", 7200)) if timeout_s is None else timeout_s
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = json.loads(marker.read_text())
        # not written yet (the rename makes a partial read impossible)
        except (OSError, ValueError):
            data = None
        if data is not None and data.get("launch") == launch:
            if "error" in data:
                raise DataError(
                    f"{out}: rank 0 failed to prepare the fine-tune data: {data['error']}"
                )
            return data["result"]
        time.sleep(0.5)
    raise DataError(
        f"{out}: rank {global_rank()} waited {timeout_s:.0f} s for rank 0 to prepare the fine-tune "
        f"data ({marker} never appeared); is the run directory on a filesystem every rank sees?"
    )


def _export_state(state: dict[str, Any], info: dict[str, Any], out_dir: Path) -> Path:
    return export_safetensors(state, info, out_dir)


def _trainable(f: FinetuneSection, model_cfg: ModelConfig) -> dict[str, int]:
    """(trainable, total) parameters of the fine-tuned model under this mode."""
    model = PhysicsTransformer(model_cfg)
    prepare = prepare_fn(f)
    if prepare is not None:
        prepare(model)
    trainable, total = count_trainable(model)
    return {"trainable": trainable, "total": total}
