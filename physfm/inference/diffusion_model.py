"""Rollout of the diffusion variant: ``PhysicsModel.from_pretrained`` returns a
:class:`DiffusionPhysicsModel` for a run, checkpoint or export whose run.json says ``"kind":
"diffusion"``.

Same interface and outputs as the AR model (physical units in and out, batched windows, the
tokenizer's baselines), with a different inside:

1. z-score the context and encode it into continuous latents (``physfm/models/latents.py``, no
   rounding);
2. sample the next latent frame(s) with the flow-matching ODE (``sampling_steps`` Euler or Heun
   steps from noise seeded by ``seed``), sliding over the trained context length;
3. decode context + new latents with the tokenizer's decoder (causal in time) and keep the new
   frames.

With a conditional tokenizer (key frame + frames coded given the previous one) the loop runs in field
space as the AR model's does: the newest context window is encoded afresh (its first frame a key
frame, as in training), the window's worth of new latent frames sampled, and those decoded one by
one given the frame before them (the true last context frame at the first step), each decoded frame
the next one's ``prev``.

``return_tokens`` gives the token ids the sampled latents round to, so evaluate's token accuracy
means the same as for the AR model. Temperature, top-k, the KV-cache switch and the refiner are AR
notions: this class takes none of them (``PhysicsModel.from_pretrained`` and ``rollout_options``
refuse them by name). ``generate_tokens`` (ids in, ids out) and
``LatentFlowTransformer.forward_window`` give the steering and probing tools, which work on token
windows, the same entry points as the AR model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_pipelines.errors import InputError
from physfm.inference.loading import load_diffusion_model, load_with_tokenizer
from physfm.inference.physics_model import PhysicsModel, RolloutStep
from physfm.inference.sampling import DiffusionSampling
from physfm.models.latents import continuous_latents, latent_ids
from physfm.models.latents import snap_to_codes as round_to_codes
from tokenizer.checkpoint import load_tokenizer
from tokenizer.model import future_token_frames


class DiffusionPhysicsModel(PhysicsModel):
    """Flow-matching transformer over latents + tokenizer, with PhysicsModel's rollout interface."""

    kind = "diffusion"
    label = "diffusion"
    method = "diffusion"
    options_type = DiffusionSampling
    refusal_hint = " (it samples from noise seeded by --seed, with --sampling-steps ODE steps, and has no refiner)"

    def __init__(
        self,
        model,
        tokenizer,
        info: dict[str, Any],
        sampling_steps: int | None = None,
        sampler: str | None = None,
        snap_to_codes: bool | None = None,
    ):
        super().__init__(model, tokenizer, info)
        d = model.diffusion
        self.sampling_steps = int(d.sampling_steps if sampling_steps is None else sampling_steps)
        self.sampler = sampler or d.sampler
        self.snap_to_codes = d.snap_to_codes if snap_to_codes is None else bool(snap_to_codes)
        if self.sampling_steps < 1:
            raise InputError(f"sampling steps: must be >= 1, got {self.sampling_steps}")
        if self.sampler not in ("euler", "heun"):
            raise InputError(f"sampler: expected 'euler' or 'heun', got {self.sampler!r}")

    @classmethod
    def _load(
        cls,
        location: Path,
        *,
        tokenizer: str | Path | None,
        device: str | torch.device,
        options: DiffusionSampling,
    ) -> DiffusionPhysicsModel:
        """``options``: override the run's ``diffusion:`` defaults where set."""
        model, info, _, tok_path = load_with_tokenizer(load_diffusion_model, location, tokenizer)
        info = {**info, "location": str(location), "tokenizer_path": str(tok_path)}
        o = options
        return cls(
            model, load_tokenizer(tok_path), info, o.sampling_steps, o.sampler, o.snap_to_codes
        ).to(device)

    # ------------------------------------------------------------------------------ latents
    @torch.no_grad()
    def encode_latents(self, frames: torch.Tensor, dataset: str) -> torch.Tensor:
        """Physical-unit frames [B, T, C, *space] → continuous latents [B, T', *grid, D] (code
        units)."""
        tok = self.tokenizer
        return continuous_latents(
            tok, tok.normalize(frames.to(self.device).float(), dataset), dataset
        )

    @torch.no_grad()
    def decode_latents(
        self,
        latents: torch.Tensor,
        dataset: str,
        n_frames: int | None = None,
        prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Latents [B, T', *grid, D] → physical-unit frames [B, T, C, *space] (rounded first if
        snap_to_codes). Conditional tokenizers, as :meth:`PhysicsModel.decode`: ``prev`` [B, C,
        *space] (physical units) is the frame before the first one and every frame decodes given
        the one before it; without ``prev`` the first frame is a key frame."""
        tok = self.tokenizer
        z_prev = None if prev is None else tok.normalize(prev.to(self.device).float(), dataset)
        decoded = tok.decode_codes(self._codes(latents), dataset, n_frames=n_frames, prev=z_prev)
        return tok.denormalize(decoded, dataset)

    def _codes(self, latents: torch.Tensor) -> torch.Tensor:
        """What the decoder reads: the latents as they are (it takes code units), or rounded to the
        nearest FSQ code with snap_to_codes."""
        codes = round_to_codes(self.tokenizer, latents) if self.snap_to_codes else latents
        return codes.to(self.device)

    @torch.no_grad()
    def generate_latents(
        self,
        context: torch.Tensor,
        n_frames: int,
        dataset: str,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Context latents [B, F, *grid, D] → the next ``n_frames`` latent frames [B, n, *grid,
        D]."""
        ids = torch.full((context.shape[0],), self.dataset_names.index(dataset), device=self.device)
        return self.model.sample_frames(
            context.to(self.device),
            n_frames,
            ids,
            steps=self.sampling_steps,
            sampler=self.sampler,
            generator=generator,
            n_context_frames=self.n_context_tokens,
            frames_per_call=self.n_window_tokens - self.n_context_tokens,
        )

    @torch.no_grad()
    def generate_tokens(
        self,
        context_ids: torch.Tensor,
        n_token_frames: int,
        dataset: str,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Token-space interface (steering, probing tools): context ids [B, F, *grid] read as their
        codes → the ids the next ``n_token_frames`` sampled latents round to. Without a generator
        the noise is seeded with 0, so repeated calls agree (a steered rollout differs from the
        unsteered one only by the steering). The rounded context loses the continuous latents'
        precision; :meth:`rollout` keeps it."""
        generator = generator or torch.Generator(device=self.device).manual_seed(0)
        codes = self.tokenizer.fsq.indices_to_codes(context_ids.to(self.device))
        return latent_ids(
            self.tokenizer, self.generate_latents(codes, n_token_frames, dataset, generator)
        )

    # ------------------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(
        self,
        context,
        horizon: int = 8,
        dataset: str | None = None,
        *,
        seed: int = 0,
        batch_size: int = 64,
        return_tokens: bool = False,
    ):
        """As :meth:`PhysicsModel.rollout`; the initial noise comes from a generator seeded with
        ``seed``, so the same seed (and batch_size) gives the same prediction."""
        return super().rollout(
            context, horizon, dataset, seed=seed, batch_size=batch_size, return_tokens=return_tokens
        )

    def _rollout_step(self, seed: int) -> RolloutStep:
        # one stream across the batches
        generator = torch.Generator(device=self.device).manual_seed(seed)

        def step(
            ctx: torch.Tensor, horizon: int, dataset: str
        ) -> tuple[torch.Tensor, torch.Tensor]:
            """ctx [B, T_in, C, *space] physical → (frames [B, horizon, C, *space], ids [B, n,
            *grid])."""
            if self.conditional:
                return self._rollout_conditional(ctx, horizon, dataset, generator)
            c, n_in = self.temporal_compression, ctx.shape[1]
            z_ctx = self.encode_latents(ctx, dataset)
            new = self.generate_latents(z_ctx, future_token_frames(horizon, c), dataset, generator)
            decoded = self.decode_latents(
                torch.cat([z_ctx, new], 1), dataset, n_frames=n_in + c * new.shape[1]
            )
            return decoded[:, n_in : n_in + horizon], latent_ids(self.tokenizer, new)

        return step

    def _rollout_conditional(
        self, ctx: torch.Tensor, horizon: int, dataset: str, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional tokenizers, in field space as the AR model's field loop: the newest
        ``T_in`` frames of the history are encoded afresh (re-keyed: the model was trained on
        windows that open with a key frame), up to a window's worth of latent frames sampled and
        decoded given the last history frame, then appended. → (frames [B, horizon, C, *space]
        physical, ids [B, horizon, *grid])."""
        tok, n_in = self.tokenizer, ctx.shape[1]
        history = tok.normalize(ctx.to(self.device).float(), dataset)
        per_call = max(1, self.n_window_tokens - self.n_context_tokens)
        new_latents = []
        while history.shape[1] < n_in + horizon:
            n_now = min(per_call, n_in + horizon - history.shape[1])
            z_ctx = continuous_latents(tok, history[:, -n_in:], dataset)
            new = self.generate_latents(z_ctx, n_now, dataset, generator)
            decoded = tok.decode_codes(self._codes(new), dataset, prev=history[:, -1])
            history = torch.cat([history, decoded], 1)
            new_latents.append(new)
        out = tok.denormalize(history[:, n_in : n_in + horizon], dataset)
        return out, latent_ids(tok, torch.cat(new_latents, 1))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "kind": "diffusion",
            "sampling_steps": self.sampling_steps,
            "sampler": self.sampler,
            "snap_to_codes": self.snap_to_codes,
        }
