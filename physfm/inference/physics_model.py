"""``PhysicsModel``: the user-facing model — AR transformer + tokenizer (+ refiner) — and its rollout.

    from physfm import PhysicsModel
    model = PhysicsModel.from_pretrained("runs/pretrain")      # a run, checkpoint or export directory
    pred = model.rollout(context, horizon=8, dataset="gray_scott2d")   # [T_in, C, *space] → [8, C, *space]

Inputs and outputs are in physical units; normalisation uses the tokenizer's own stats. A rollout:

1. z-score the context and encode it into token frames (the causal tokenizer: ``1 + (T-1)/c`` token frames
   for T frames at temporal compression c; with c = 1 one token frame per field frame);
2. generate the next token frames with the transformer's preallocated, batched KV cache (greedy at
   temperature 0, else sampling, optionally top-k), sliding over the trained window length;
3. decode context + generated tokens together (the decoder is causal in time too) and keep the new frames.

With ``refine=True`` the loop runs one token frame at a time in field space: decode, correct with the
refiner, append the refined frame to the history and re-encode the newest context for the next step, so
refinement also steers later steps (the transformer sees the refined past, not its own raw tokens).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.errors import DataError, InputError
from physfm.core.errors import CheckpointError
from physfm.inference.loading import load_ar_model, load_with_tokenizer, model_kind
from physfm.models.refiner import is_refiner_dir, load_refiner, state_sha256
from tokenizer.checkpoint import load_tokenizer


def _refiner_location(location: Path, run_dir: Path) -> Path | None:
    for candidate in (location / "refiner", run_dir / "refiner"):
        if is_refiner_dir(candidate):
            return candidate
    return None


class PhysicsModel:
    """AR transformer + tokenizer (+ optional refiner) with a physical-units rollout."""

    def __init__(self, model, tokenizer, info: dict[str, Any], refiner=None, refiner_meta: dict | None = None):
        self.model, self.tokenizer, self.info = model.eval(), tokenizer.eval(), info
        self.refiner, self.refiner_meta = (refiner.eval() if refiner is not None else None), refiner_meta
        self.dataset_names: list[str] = list(info["dataset_names"])
        self.n_context_tokens = int(info["n_context_frames"])  # token frames of context seen in training
        self.n_window_tokens = int(info["n_frames"])  # token frames per training window
        self.temporal_compression = int(tokenizer.cfg.temporal_compression)
        self.n_spatial_dims = int(tokenizer.cfg.n_spatial_dims)

    # ------------------------------------------------------------------------------ loading
    kind = "ar"  # the run.json kind this class loads; subclasses register their own
    _kinds: dict[str, type[PhysicsModel]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PhysicsModel._kinds[cls.kind] = cls

    @classmethod
    def from_pretrained(
        cls,
        location: str | Path,
        *,
        tokenizer: str | Path | None = None,
        refiner: str | Path | bool | None = "auto",
        device: str | torch.device = "cpu",
        sampling_steps: int | None = None,
        sampler: str | None = None,
    ) -> PhysicsModel:
        """Load from a pretrain run directory, a checkpoint or an export directory.

        ``tokenizer``: override the tokenizer recorded in the run. ``refiner``: "auto" loads
        ``LOCATION/refiner`` (or the run's) when present, a path loads that one, False/None loads none.
        A diffusion run (run.json kind) loads as :class:`physfm.inference.DiffusionPhysicsModel`;
        ``sampling_steps``/``sampler`` (ODE steps, "euler"/"heun") apply to it only."""
        location = Path(location)
        try:
            kind = model_kind(location)
        except CheckpointError as err:
            raise DataError(str(err)) from None
        if kind != cls.kind:  # the class of the run's kind loads it (physfm.inference imports every kind)
            if kind not in PhysicsModel._kinds:
                raise DataError(f"{location}: model kind {kind!r} has no PhysicsModel class")
            return PhysicsModel._kinds[kind].from_pretrained(
                location,
                tokenizer=tokenizer,
                refiner=refiner,
                device=device,
                sampling_steps=sampling_steps,
                sampler=sampler,
            )
        if sampling_steps is not None or sampler is not None:
            raise InputError(f"{location}: --sampling-steps/--sampler apply to diffusion models; this is an AR model")
        model, info, run_dir, tok_path = load_with_tokenizer(load_ar_model, location, tokenizer)
        tok = load_tokenizer(tok_path)
        recorded = info.get("tokenizer_fingerprint")
        ref, meta = None, None
        ref_path = _refiner_location(location, run_dir) if refiner == "auto" else (Path(refiner) if refiner else None)
        if ref_path is not None:
            ref, meta = load_refiner(ref_path)
            if recorded and meta.get("tokenizer_fingerprint") not in (None, recorded):
                raise DataError(f"{ref_path}: refiner was trained with another tokenizer than this model's")
            if meta.get("ar_sha256") and meta["ar_sha256"] != state_sha256(model):
                warnings.warn(
                    f"{ref_path}: refiner was trained against other AR weights than {location} "
                    "(the run trained on?); retrain it with `physfm refine` for the best results",
                    stacklevel=2,
                )
            meta = {**meta, "path": str(ref_path)}
        info = {**info, "location": str(location), "tokenizer_path": str(tok_path)}
        return cls(model, tok, info, ref, meta).to(device)

    def to(self, device: str | torch.device) -> PhysicsModel:
        self.model.to(device)
        self.tokenizer.to(device)
        if self.refiner is not None:
            self.refiner.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_input_frames(self) -> int:
        """Field frames of context the model reads (its training windows' context)."""
        return 1 + self.temporal_compression * (self.n_context_tokens - 1)

    def channel_names(self, dataset: str) -> list[str]:
        return list(self.tokenizer.datasets[self.resolve_dataset(dataset)].channel_names)

    def resolve_dataset(self, dataset: str | None) -> str:
        if dataset is None:
            if len(self.dataset_names) == 1:
                return self.dataset_names[0]
            raise InputError(f"dataset: this model knows several ({', '.join(self.dataset_names)}); name one")
        if dataset not in self.dataset_names:
            raise InputError(f"dataset {dataset!r} is unknown to this model (knows: {', '.join(self.dataset_names)})")
        if dataset not in self.tokenizer.datasets:
            raise InputError(f"dataset {dataset!r} is unknown to the model's tokenizer")
        return dataset

    # ------------------------------------------------------------------------------ pieces
    @torch.no_grad()
    def encode(self, frames: torch.Tensor, dataset: str) -> torch.Tensor:
        """Physical-unit frames [B, T, C, *space] → token ids [B, T', *grid]."""
        tok = self.tokenizer
        return tok.encode(tok.normalize(frames.to(self.device).float(), dataset), dataset)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, dataset: str, n_frames: int | None = None) -> torch.Tensor:
        """Token ids [B, T', *grid] → physical-unit frames [B, T, C, *space] (T = 1 + c (T'-1) or n_frames)."""
        tok = self.tokenizer
        return tok.denormalize(tok.decode(ids.to(self.device), dataset, n_frames=n_frames), dataset)

    @torch.no_grad()
    def generate_tokens(
        self,
        context_ids: torch.Tensor,
        n_token_frames: int,
        dataset: str,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Context token frames [B, F, *grid] → the next ``n_token_frames`` [B, n, *grid]."""
        ids = torch.full((context_ids.shape[0],), self.dataset_names.index(dataset), device=self.device)
        return self.model.generate_frames(
            context_ids.to(self.device),
            n_token_frames,
            ids,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            use_cache=use_cache,
            window_frames=self.n_window_tokens,
        )

    # ------------------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(
        self,
        context,
        horizon: int = 8,
        dataset: str | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 0,
        refine: bool = False,
        use_cache: bool = True,
        batch_size: int = 64,
        return_tokens: bool = False,
    ):
        """Predict ``horizon`` frames after ``context`` ([T_in, C, *space] or [B, T_in, C, *space], physical
        units; the last ``n_input_frames`` are used) → [(B,) horizon, C, *space] on the context's device.
        With ``return_tokens`` also the generated token frames [(B,) n, *grid]."""
        dataset = self.resolve_dataset(dataset)
        if horizon < 1:
            raise InputError(f"horizon: must be >= 1, got {horizon}")
        if refine and self.refiner is None:
            raise InputError("refine=True: this model has no refiner (train one with `physfm refine`)")
        x = torch.as_tensor(np.asarray(context) if not isinstance(context, torch.Tensor) else context)
        n, C = self.n_spatial_dims, len(self.tokenizer.datasets[dataset].channel_names)
        if x.ndim not in (n + 2, n + 3):
            raise InputError(
                f"context: expected [T_in, C, *space] or [B, T_in, C, *space] with {n} spatial axes, "
                f"got shape {tuple(x.shape)}"
            )
        batched = x.ndim == n + 3
        x = x if batched else x[None]
        if x.shape[2] != C:
            raise InputError(
                f"context: dataset {dataset!r} has {C} channels {self.channel_names(dataset)}, got {x.shape[2]}"
            )
        if x.shape[1] < self.n_input_frames:
            raise InputError(f"context: the model reads {self.n_input_frames} frames, got {x.shape[1]}")
        x = x[:, -self.n_input_frames :]
        generator = torch.Generator(device=self.device).manual_seed(seed) if temperature > 0 else None
        frames, tokens = [], []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size].to(self.device).float()
            step = self._rollout_fields if refine else self._rollout_tokens
            f, t = step(chunk, horizon, dataset, temperature, top_k, generator, use_cache)
            frames.append(f.to(x.device))
            tokens.append(t)
        out, ids = torch.cat(frames), torch.cat(tokens)
        if not batched:
            out, ids = out[0], ids[0]
        return (out, ids) if return_tokens else out

    def _rollout_tokens(self, ctx, horizon, dataset, temperature, top_k, generator, use_cache):
        """All token frames at once in token space, then one decode: ctx [B, T_in, C, *space] physical."""
        c, n_in = self.temporal_compression, ctx.shape[1]
        ctx_ids = self.encode(ctx, dataset)
        new = self.generate_tokens(ctx_ids, math.ceil(horizon / c), dataset, temperature, top_k, generator, use_cache)
        decoded = self.decode(torch.cat([ctx_ids, new], 1), dataset, n_frames=n_in + c * new.shape[1])
        return decoded[:, n_in : n_in + horizon], new

    def _rollout_fields(self, ctx, horizon, dataset, temperature, top_k, generator, use_cache):
        """One token frame per step; decoded frames are refined and fed back (re-encoded) as context."""
        tok, c, n_in = self.tokenizer, self.temporal_compression, ctx.shape[1]
        history = tok.normalize(ctx, dataset)  # [B, T, C, *space] z-scored
        new_tokens = []
        while history.shape[1] < n_in + horizon:
            window = history[:, -n_in:]
            ids = tok.encode(window, dataset)
            new = self.generate_tokens(ids, 1, dataset, temperature, top_k, generator, use_cache)
            decoded = tok.decode(torch.cat([ids, new], 1), dataset, n_frames=n_in + c)[:, n_in:]  # [B, c, C, *space]
            for j in range(decoded.shape[1]):
                refined = self.refiner(decoded[:, j], history, dataset)
                history = torch.cat([history, refined[:, None]], dim=1)
            new_tokens.append(new)
        out = tok.denormalize(history[:, n_in : n_in + horizon], dataset)
        return out, torch.cat(new_tokens, 1)

    # ------------------------------------------------------------------------------ baselines in token space
    @torch.no_grad()
    def tokenizer_ceiling(self, context: torch.Tensor, truth: torch.Tensor, dataset: str) -> torch.Tensor:
        """The true future's own tokens decoded (no token model can do better): [B, H, C, *space]."""
        window = torch.cat([context, truth], 1)
        decoded = self.decode(self.encode(window, dataset), dataset, n_frames=window.shape[1])
        return decoded[:, context.shape[1] :].to(truth.device)

    @torch.no_grad()
    def copy_tokens(
        self, context: torch.Tensor, horizon: int, dataset: str, context_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The last context token frame repeated and decoded: persistence in token space. ``context_ids``:
        the context's token frames when already encoded."""
        c, n_in = self.temporal_compression, context.shape[1]
        ids = self.encode(context, dataset) if context_ids is None else context_ids.to(self.device)
        n_new = math.ceil(horizon / c)
        ids = torch.cat([ids, ids[:, -1:].expand(-1, n_new, *ids.shape[2:])], 1)
        return self.decode(ids, dataset, n_frames=n_in + c * n_new)[:, n_in : n_in + horizon].to(context.device)

    def describe(self) -> dict[str, Any]:
        return {
            "location": self.info.get("location"),
            "tokenizer": self.info.get("tokenizer_path"),
            "datasets": self.dataset_names,
            "n_input_frames": self.n_input_frames,
            "temporal_compression": self.temporal_compression,
            "n_params": self.model.num_params(),
            "refiner": (self.refiner_meta or {}).get("path"),
        }
