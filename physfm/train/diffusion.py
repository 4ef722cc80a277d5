"""Training the diffusion variant (``model.kind=diffusion``) with the AR model's loop, strategies
and checkpoints.

``physfm pretrain`` dispatches here for the data description, the LightningModule, the loaders and
the run.json entry; everything else (Trainer, ddp/DeepSpeed, precision, the non-finite guard, RNG in
checkpoints, throughput, signal-driven stop, resume) is the AR path unchanged.

Data: field shards (``data.shards``), encoded on the fly by the frozen tokenizer (``tokenizer``)
into continuous latents (``physfm/models/latents.py``). Chosen over pre-encoded latent shards
because
- the tiny tokenizer's encoder costs a small fraction of the transformer's forward + backward (a
  conv net on the same grid, no backward), so a second copy of the data would buy little;
- no new on-disk format and no stale-latent risk: a run can only ever see latents of the tokenizer
  it names (its fingerprint goes into run.json, as for token shards);
- the latents of a window are computed from that window's own frames, exactly as at rollout.
The tokenizer is kept *out* of the module tree: it is not trained, not in the checkpoints, and not
sharded or cast to bf16 by DeepSpeed; it runs in fp32 with autocast off (FSQ's bound is not
bf16-exact).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from physfm.models.diffusion import DiffusionConfig, LatentFlowTransformer
from physfm.models.latents import continuous_latents
from physfm.models.trunk import ModelConfig
from physfm.train.module import ARModule
from tokenizer.checkpoint import load_tokenizer
from tokenizer.model import token_frames


class DiffusionModule(ARModule):
    """The flow-matching transformer under Lightning: the AR module's optimiser, schedule, guard and
    RNG checkpointing, with the loss computed on latents the frozen tokenizer makes from each field
    batch."""

    def __init__(
        self,
        model: ModelConfig,
        optim: dict[str, Any],
        dataset_names: list[str],
        n_context_frames: int,
        max_steps: int,
        nonfinite_loss: str = "stop",
        strategy: dict[str, Any] | None = None,
        diffusion: DiffusionConfig | None = None,
        tokenizer: str = "",
    ):
        # Typed for build_model, which ARModule.__init__ calls; the hparams get a plain copy, as for
        # the model.
        object.__setattr__(self, "diffusion_config", diffusion or DiffusionConfig())
        super().__init__(
            model, optim, dataset_names, n_context_frames, max_steps, nonfinite_loss, strategy
        )
        self.hparams["diffusion"] = dataclasses.asdict(self.diffusion_config)

        tok = load_tokenizer(tokenizer).eval().requires_grad_(False)
        object.__setattr__(self, "tokenizer", tok)  # not a submodule: see the module docstring

    def build_model(self) -> LatentFlowTransformer:
        return LatentFlowTransformer(self.model_config, self.diffusion_config)

    @torch.no_grad()
    def latents(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Field batch → (context latents [B, F_ctx, *grid, D], target latents [B, F_tgt, *grid,
        D])."""
        tok, name = self.tokenizer, batch["dataset"]
        if tok.to_code.weight.device != self.device:
            tok.to(self.device)
        fields = torch.cat([batch["input"], batch["output"]], dim=1).to(self.device, torch.float32)
        with torch.autocast(self.device.type, enabled=False):
            z = continuous_latents(tok, tok.normalize(fields, name), name)
        return z[:, : self.n_context_frames], z[:, self.n_context_frames :]

    def batch_tokens(self, batch: dict[str, Any]) -> tuple[int, int]:
        """As :meth:`ARModule.batch_tokens`, for the latent grid the tokenizer makes of this field
        batch."""
        fields = batch["input"]  # [B, T_in, C, *space]; the output frames follow in time
        n_fields = fields.shape[1] + batch["output"].shape[1]
        cfg = self.tokenizer.cfg
        grid = [size // cfg.spatial_compression for size in fields.shape[3:]]
        n_frames = token_frames(n_fields, cfg.temporal_compression)
        per_sample = n_frames * math.prod(grid)
        return fields.shape[0] * per_sample, per_sample + self.model.n_cond_tokens

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        context, target = self.latents(batch)
        ids = self.dataset_ids(batch["dataset"], context.shape[0])
        return self.model.loss(context, target, ids, generator=generator)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # Fixed noise and times per validation batch: checks are comparable, and the global RNG
        # (which the checkpoints carry for exact resume) is untouched.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.loss(batch, generator)
        self.log(
            "val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["input"].shape[0]
        )
        return loss
