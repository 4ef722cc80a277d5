"""Training the diffusion variant (``model.kind=diffusion``) with the AR model's loop, strategies and checkpoints.

``physfm pretrain`` dispatches here for the data description, the LightningModule, the loaders and the
run.json entry; everything else (Trainer, ddp/DeepSpeed, precision, the non-finite guard, RNG in
checkpoints, throughput, signal-driven stop, resume) is the AR path unchanged.

Data: field shards (``data.shards``), encoded on the fly by the frozen tokenizer (``tokenizer``) into
continuous latents (``physfm/latents.py``). Chosen over pre-encoded latent shards because
- the tiny tokenizer's encoder costs a small fraction of the transformer's forward + backward (a conv
  net on the same grid, no backward), so a second copy of the data would buy little;
- no new on-disk format and no stale-latent risk: a run can only ever see latents of the tokenizer it
  names (its fingerprint goes into run.json, as for token shards);
- the latents of a window are computed from that window's own frames, exactly as at rollout.
The tokenizer is kept *out* of the module tree: it is not trained, not in the checkpoints, and not
sharded or cast to bf16 by DeepSpeed; it runs in fp32 with autocast off (FSQ's bound is not bf16-exact).
"""

from __future__ import annotations

from typing import Any

import torch

from data_pipelines.config import ConfigError, to_dict
from physfm.diffusion import DiffusionConfig, LatentFlowTransformer
from physfm.pretrain import PretrainConfig, TokenDataModule, token_layout
from physfm.training import ARModule


def describe_fields(cfg: PretrainConfig) -> dict[str, Any]:
    """Read the field-shard manifests and the tokenizer: datasets, latent window layout, latent size."""
    from data_pipelines.shards import read_manifest
    from tokenizer.checkpoint import fingerprint, read_checkpoint_meta

    meta = read_checkpoint_meta(cfg.tokenizer)
    latent_dim, c = len(meta["model"]["levels"]), int(meta["model"]["temporal_compression"])
    if cfg.diffusion.latent_dim not in (0, latent_dim):
        raise ConfigError(f"diffusion.latent_dim={cfg.diffusion.latent_dim}, but tokenizer {cfg.tokenizer} has "
                          f"{latent_dim} FSQ levels (latent channels); set 0 to take it from the tokenizer")
    if cfg.diffusion.fsq_levels and list(cfg.diffusion.fsq_levels) != list(meta["model"]["levels"]):
        raise ConfigError(f"diffusion.fsq_levels={cfg.diffusion.fsq_levels}, but tokenizer {cfg.tokenizer} has "
                          f"{meta['model']['levels']}; leave it empty to take it from the tokenizer")
    names: list[str] = []
    layouts = set()
    for location in cfg.data.shards:
        manifest = read_manifest(location)
        if manifest.get("tokenizer_fingerprint"):
            raise ConfigError(f"data.shards: {location} holds token shards; the diffusion model trains on field "
                              "shards (physfm data shard), encoded on the fly by the tokenizer")
        for name, entry in manifest["datasets"].items():
            known = meta["datasets"].get(name)
            if known is None:
                raise ConfigError(f"data.shards: dataset {name!r} of {location} is unknown to tokenizer "
                                  f"{cfg.tokenizer} (knows: {', '.join(sorted(meta['datasets']))})")
            if list(known["channel_names"]) != list(entry["channel_names"]):
                raise ConfigError(f"data.shards: dataset {name!r} has channels {entry['channel_names']}, the "
                                  f"tokenizer expects {known['channel_names']}")
            names.append(name)
        layouts.add(token_layout({"n_input": manifest["n_input"], "n_output": manifest["n_output"],
                                  "tokenizer": {"temporal_compression": c}}))
    if len(layouts) > 1:
        raise ConfigError(f"data.shards: shard sets have different window layouts {sorted(layouts)}")
    n_context, n_total = layouts.pop()
    if n_total > cfg.model.max_frames:
        raise ConfigError(f"model.max_frames={cfg.model.max_frames} is shorter than the {n_total}-frame latent windows")
    return {"dataset_names": sorted(names), "n_context": n_context, "n_frames": n_total,
            "tokenizer_fingerprint": fingerprint(cfg.tokenizer), "latent_dim": latent_dim,
            "fsq_levels": [int(v) for v in meta["model"]["levels"]]}


def diffusion_section(cfg: PretrainConfig, info: dict[str, Any]) -> dict[str, Any]:
    """The ``diffusion:`` config with the latent size and FSQ levels resolved from the tokenizer."""
    return {**to_dict(cfg.diffusion), "latent_dim": info["latent_dim"], "fsq_levels": info["fsq_levels"]}


def diffusion_run_info(cfg: PretrainConfig, info: dict[str, Any]) -> dict[str, Any]:
    """run.json of a diffusion run: what PhysicsModel.from_pretrained needs (kind, sizes, tokenizer)."""
    return {
        "kind": "diffusion",
        "model": to_dict(cfg.model),
        "diffusion": diffusion_section(cfg, info),
        "dataset_names": info["dataset_names"],
        "n_context_frames": info["n_context"],  # latent frames (= token frames)
        "n_frames": info["n_frames"],
        "tokenizer": cfg.tokenizer,
        "tokenizer_fingerprint": info["tokenizer_fingerprint"],
        "shards": list(cfg.data.shards),
    }


def build_diffusion_module(cfg: PretrainConfig, info: dict[str, Any]) -> DiffusionModule:
    return DiffusionModule(
        model=to_dict(cfg.model), optim=to_dict(cfg.optim), dataset_names=info["dataset_names"],
        n_context_frames=info["n_context"], max_steps=cfg.trainer.max_steps,
        nonfinite_loss=cfg.trainer.nonfinite_loss, strategy=to_dict(cfg.strategy),
        diffusion=diffusion_section(cfg, info), tokenizer=cfg.tokenizer,
    )


class FieldDataModule(TokenDataModule):
    """Loaders over field shards (input and output frames, physical units: the tokenizer z-scores)."""

    def train_loader(self, consumed_batches: int):
        from data_pipelines.loader import make_loader

        d = self.cfg.data
        return make_loader(
            d.shards, "train", d.batch_size, num_workers=d.num_workers, seed=self.cfg.seed, resampled=True,
            batches_per_epoch=self.total_batches, skip_batches=consumed_batches, shuffle_buffer=d.shuffle_buffer,
            dataset_weights=d.dataset_weights, keys=("input", "output"), normalize=False, on_error=d.on_error,
        )

    def val_loader(self):
        from data_pipelines.loader import make_loader

        d = self.cfg.data
        return make_loader(
            d.shards, "valid", d.batch_size, num_workers=0, seed=self.cfg.seed, resampled=True,
            batches_per_epoch=d.val_batches, keys=("input", "output"), normalize=False,
            shuffle_buffer=d.shuffle_buffer, dataset_weights=d.dataset_weights,
        )


class DiffusionModule(ARModule):
    """The flow-matching transformer under Lightning: the AR module's optimiser, schedule, guard and RNG
    checkpointing, with the loss computed on latents the frozen tokenizer makes from each field batch."""

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], dataset_names: list[str],
                 n_context_frames: int, max_steps: int, nonfinite_loss: str = "stop",
                 strategy: dict[str, Any] | None = None, diffusion: dict[str, Any] | None = None,
                 tokenizer: str = ""):
        super().__init__(model, optim, dataset_names, n_context_frames, max_steps, nonfinite_loss, strategy)
        from tokenizer.checkpoint import load_tokenizer

        tok = load_tokenizer(tokenizer).eval().requires_grad_(False)
        object.__setattr__(self, "tokenizer", tok)  # not a submodule: see the module docstring

    def build_model(self) -> LatentFlowTransformer:
        return LatentFlowTransformer(self.model_config, DiffusionConfig(**self.hparams.diffusion))

    @torch.no_grad()
    def latents(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Field batch → (context latents [B, F_ctx, *grid, D], target latents [B, F_tgt, *grid, D])."""
        from physfm.latents import continuous_latents

        tok, name = self.tokenizer, batch["dataset"]
        if tok.to_code.weight.device != self.device:
            tok.to(self.device)
        fields = torch.cat([batch["input"], batch["output"]], dim=1).to(self.device, torch.float32)
        with torch.autocast(self.device.type, enabled=False):
            z = continuous_latents(tok, tok.normalize(fields, name), name)
        return z[:, :self.n_context_frames], z[:, self.n_context_frames:]

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        context, target = self.latents(batch)
        ids = self.dataset_ids(batch["dataset"], context.shape[0])
        return self.model.loss(context, target, ids, generator=generator)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # Fixed noise and times per validation batch: checks are comparable, and the global RNG (which
        # the checkpoints carry for exact resume) is untouched.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.loss(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["input"].shape[0])
        return loss
