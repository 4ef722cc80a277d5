"""Per model kind, what differs in a training run: the data it reads, the LightningModule it trains,
and the run.json it leaves. ``physfm pretrain`` looks the kind up here instead of branching on
it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from data_pipelines.config import to_dict
from physfm.core.model_config import DiffusionConfig, ModelConfig
from physfm.core.run_info import RunInfo
from physfm.train.config import PretrainConfig
from physfm.train.data import FieldDataModule, TokenDataModule, describe_fields, describe_tokens
from physfm.train.diffusion import DiffusionModule
from physfm.train.module import ARModule


@dataclass(frozen=True)
class Recipe:
    # manifests + tokenizer → datasets, window layout
    describe: Callable[[PretrainConfig], dict[str, Any]]
    data_module: type[TokenDataModule]
    build_module: Callable[[PretrainConfig, dict[str, Any]], ARModule]
    run_info: Callable[[PretrainConfig, dict[str, Any]], RunInfo]


def built_model_config(cfg: PretrainConfig) -> ModelConfig:
    """The model config the run builds: the ``model:`` section with the training layer's choice
    folded in before the build (``strategy.activation_checkpointing`` recomputes each block in
    backward), so the built model never has its config changed afterwards."""
    checkpointing = cfg.model.activation_checkpointing or cfg.strategy.activation_checkpointing
    return dataclasses.replace(cfg.model, activation_checkpointing=checkpointing)


def _module_args(cfg: PretrainConfig, info: dict[str, Any]) -> dict[str, Any]:
    return dict(
        model=built_model_config(cfg),
        optim=to_dict(cfg.optim),
        dataset_names=info["dataset_names"],
        n_context_frames=info["n_context"],
        max_steps=cfg.trainer.max_steps,
        nonfinite_loss=cfg.trainer.nonfinite_loss,
        strategy=to_dict(cfg.strategy),
    )


def _run_info(cfg: PretrainConfig, info: dict[str, Any], **kind_fields: Any) -> RunInfo:
    return RunInfo(
        kind=cfg.model.kind,
        model=cfg.model,
        dataset_names=info["dataset_names"],
        n_context_frames=info["n_context"],
        n_frames=info["n_frames"],
        tokenizer=info.get("tokenizer", cfg.tokenizer),  # AR: the one the token manifest names
        tokenizer_fingerprint=info["tokenizer_fingerprint"],
        **kind_fields,
    )


def diffusion_section(cfg: PretrainConfig, info: dict[str, Any]) -> DiffusionConfig:
    """The ``diffusion:`` config with the latent size and FSQ levels resolved from the tokenizer."""
    return dataclasses.replace(
        cfg.diffusion, latent_dim=info["latent_dim"], fsq_levels=info["fsq_levels"]
    )


AR = Recipe(
    describe=describe_tokens,
    data_module=TokenDataModule,
    build_module=lambda cfg, info: ARModule(
        **_module_args(cfg, info),
        conditional_tokens=info["conditional_tokens"],
        stability=to_dict(cfg.stability),
    ),
    run_info=lambda cfg, info: _run_info(cfg, info, tokens=list(cfg.data.tokens)),
)

DIFFUSION = Recipe(
    describe=describe_fields,
    data_module=FieldDataModule,
    build_module=lambda cfg, info: DiffusionModule(
        **_module_args(cfg, info), diffusion=diffusion_section(cfg, info), tokenizer=cfg.tokenizer
    ),
    run_info=lambda cfg, info: _run_info(
        cfg, info, shards=list(cfg.data.shards), diffusion=diffusion_section(cfg, info)
    ),
)

RECIPES: dict[str, Recipe] = {"ar": AR, "diffusion": DIFFUSION}


def recipe_for(cfg: PretrainConfig) -> Recipe:
    return RECIPES[cfg.model.kind]
