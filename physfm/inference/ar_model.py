"""The AR kind of :class:`PhysicsModel`: AR transformer + tokenizer (+ refiner); what
``PhysicsModel.from_pretrained`` returns for a run whose run.json says ``"kind": "ar"``.

A rollout:

1. z-score the context and encode it into token frames (the causal tokenizer: ``1 + (T-1)/c`` token
   frames for T frames at temporal compression c; with c = 1 one token frame per field frame);
2. generate the next token frames with the transformer's preallocated, batched KV cache (greedy at
   temperature 0, else sampling, optionally top-k), sliding over the trained window length;
3. decode context + generated tokens together (the decoder is causal in time too) and keep the new
   frames.

With ``refine=True``, or with conditional tokens, the loop runs one token frame at a time in field
space: decode, correct with the refiner (when refining), append the frame to the history and feed
its tokens back, so refinement also steers later steps (the transformer sees the refined past, not
its own raw tokens). Conditional tokens decode each new frame given the last frame of the history
(the true last context frame at the first step). The model was trained on windows whose first frame
is a key frame, so the loop *re-keys* (encodes the newest context afresh and prefills it) only when
the trained window is full: with 4 + 1 frame windows every frame, with 4 + K windows every K frames,
the K - 1 frames in between appended to the KV cache (one forward over the new frame's tokens,
:class:`physfm.models.ar.FrameStream`) — the same tokens as re-encoding and re-running the grown
window whole (``use_cache=False``), at a fraction of the cost.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from data_pipelines.errors import DataError, InputError
from physfm.inference.loading import load_ar_model, load_with_tokenizer
from physfm.inference.physics_model import PhysicsModel
from physfm.inference.sampling import ARSampling
from physfm.models.ar import FrameStream
from physfm.models.refiner import is_refiner_dir, load_refiner, state_sha256
from tokenizer.checkpoint import load_tokenizer
from tokenizer.model import future_token_frames


def _refiner_location(location: Path, run_dir: Path) -> Path | None:
    for candidate in (location / "refiner", run_dir / "refiner"):
        if is_refiner_dir(candidate):
            return candidate
    return None


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _torch_dtype(dtype: str | torch.dtype, location: Path) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if dtype not in _DTYPES:
        raise InputError(f"{location}: dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


class ARPhysicsModel(PhysicsModel):
    """AR transformer + tokenizer (+ optional refiner) with a physical-units rollout."""

    kind = "ar"
    label = "AR"
    method = "ar"
    options_type = ARSampling

    def __init__(
        self, model, tokenizer, info: dict[str, Any], refiner=None, refiner_meta: dict | None = None
    ):
        super().__init__(model, tokenizer, info)
        self.refiner, self.refiner_meta = (
            (refiner.eval() if refiner is not None else None),
            refiner_meta,
        )

    @classmethod
    def _load(
        cls,
        location: Path,
        *,
        tokenizer: str | Path | None,
        device: str | torch.device,
        options: ARSampling,
    ) -> ARPhysicsModel:
        """``options.refiner``: "auto" loads ``LOCATION/refiner`` (or the run's) when present, a
        path loads that one, False/None loads none. ``options.dtype``: the transformer's (None = as
        saved, float32); "bfloat16" runs it ~2.7x faster on CPUs with AMX (and on GPUs). The
        tokenizer and refiner stay in float32: they are a small part of a step, and the
        encode/decode round trip keeps its precision."""
        refiner, dtype = options.refiner, options.dtype
        model, info, run_dir, tok_path = load_with_tokenizer(load_ar_model, location, tokenizer)
        tok = load_tokenizer(tok_path)
        recorded = info.get("tokenizer_fingerprint")
        ref, meta = None, None
        ref_path = (
            _refiner_location(location, run_dir)
            if refiner == "auto"
            else (Path(refiner) if refiner else None)
        )
        if ref_path is not None:
            ref, meta = load_refiner(ref_path)
            if recorded and meta.get("tokenizer_fingerprint") not in (None, recorded):
                raise DataError(
                    f"{ref_path}: refiner was trained with another tokenizer than this model's"
                )
            if meta.get("ar_sha256") and meta["ar_sha256"] != state_sha256(model):
                warnings.warn(
                    f"{ref_path}: refiner was trained against other AR weights than {location} "
                    "(the run trained on?); retrain it with `physfm refine` for the best results",
                    stacklevel=3,
                )
            meta = {**meta, "path": str(ref_path)}
        if dtype is not None:  # after the refiner's check, which hashes the weights as saved
            model = model.to(_torch_dtype(dtype, location))
        info = {**info, "location": str(location), "tokenizer_path": str(tok_path)}
        return cls(model, tok, info, ref, meta).to(device)

    @property
    def refines_by_default(self) -> bool:
        """Whether :meth:`rollout` refines unless told: the model has a refiner and that refiner
        improved the model's predictions on held-out windows when it was fit (``refiner.json``
        ``improves``)."""
        return self.refiner is not None and bool((self.refiner_meta or {}).get("improves", True))

    def to(self, device: str | torch.device) -> ARPhysicsModel:
        super().to(device)
        if self.refiner is not None:
            self.refiner.to(device)
        return self

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
        ids = torch.full(
            (context_ids.shape[0],), self.dataset_names.index(dataset), device=self.device
        )
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
        refine: bool | None = None,
        use_cache: bool = True,
        batch_size: int = 64,
        return_tokens: bool = False,
    ):
        """As :meth:`PhysicsModel.rollout`: greedy at ``temperature`` 0, else sampling (``top_k``
        optional) seeded by ``seed``; ``refine`` corrects each frame with the refiner and feeds it
        back (default: :attr:`refines_by_default`, when the model has a refiner that helped on
        held-out windows); ``use_cache=False`` re-runs the whole prefix per token (the reference
        path)."""
        if refine is None:
            refine = self.refines_by_default
        if refine and self.refiner is None:
            raise InputError(
                "refine=True: this model has no refiner (train one with `physfm refine`)"
            )
        generator = (
            torch.Generator(device=self.device).manual_seed(seed) if temperature > 0 else None
        )
        # Conditional tokens re-key the window (its first frame a key frame) at every step: the
        # field loop.
        fields = refine or self.conditional

        def step(
            ctx: torch.Tensor, horizon: int, dataset: str
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if fields:
                return self._rollout_fields(
                    ctx, horizon, dataset, temperature, top_k, generator, use_cache, refine
                )
            return self._rollout_tokens(
                ctx, horizon, dataset, temperature, top_k, generator, use_cache
            )

        return self._rollout(context, horizon, dataset, batch_size, return_tokens, step)

    def _rollout_tokens(self, ctx, horizon, dataset, temperature, top_k, generator, use_cache):
        """All token frames at once in token space, then one decode: ctx [B, T_in, C, *space]
        physical."""
        c, n_in = self.temporal_compression, ctx.shape[1]
        ctx_ids = self.encode(ctx, dataset)
        new = self.generate_tokens(
            ctx_ids,
            future_token_frames(horizon, c),
            dataset,
            temperature,
            top_k,
            generator,
            use_cache,
        )
        decoded = self.decode(
            torch.cat([ctx_ids, new], 1), dataset, n_frames=n_in + c * new.shape[1]
        )
        return decoded[:, n_in : n_in + horizon], new

    @property
    def frames_per_key(self) -> int:
        """Token frames a field-space rollout generates from one encoded window before it re-keys
        (encodes its newest context afresh, first frame a key frame): the trained window minus its
        context, so a model trained on 4 + 1 frame windows re-keys every frame and one trained on 4
        + 4 appends three frames to its KV cache in between (:class:`FrameStream`). Needs one token
        frame per field frame and next-frame mode."""
        if self.temporal_compression != 1 or self.model.config.prediction != "next_frame":
            return 1
        return max(1, self.n_window_tokens - self.n_context_tokens)

    def _newest_ids(self, history: torch.Tensor, anchor: int, dataset: str) -> torch.Tensor:
        """Token ids [B, *grid] of the newest history frame as frame ``len - anchor`` of the window
        that starts at ``anchor``: conditional tokens code it given the frame before it alone; a
        plain (causal) tokenizer codes the window up to it."""
        if self.conditional:
            return self.tokenizer.encode_step(history[:, -1], history[:, -2], dataset)
        return self.tokenizer.encode(history[:, anchor:], dataset)[:, -1]

    def _rollout_fields(
        self, ctx, horizon, dataset, temperature, top_k, generator, use_cache, refine
    ):
        """One token frame per step in field space: the newest context window is encoded
        (conditional tokens: its first frame as a key frame), the next token frame generated and
        decoded (conditional: given the last frame of the history), refined when asked, and appended
        to the history the next step reads. While the trained window has room
        (:attr:`frames_per_key`), the new frame's tokens are appended to the KV cache instead of
        re-encoding and re-prefilling the window; ``use_cache=False`` re-encodes the grown window
        and re-runs it whole every frame (the reference the cached path must equal)."""
        tok, n_in = self.tokenizer, ctx.shape[1]
        history = tok.normalize(ctx, dataset)  # [B, T, C, *space] z-scored
        per_key, new_tokens = self.frames_per_key, []
        ds_ids = torch.full((ctx.shape[0],), self.dataset_names.index(dataset), device=self.device)
        while history.shape[1] < n_in + horizon:
            # the re-keyed window starts here and grows by a frame per step
            anchor = history.shape[1] - n_in
            ids = tok.encode(history[:, anchor:], dataset)
            stream = (
                FrameStream(self.model, ids, ds_ids, n_in + per_key)
                if use_cache and per_key > 1
                else None
            )
            for k in range(min(per_key, n_in + horizon - history.shape[1])):
                if k > 0 and stream is not None:  # the new frame's tokens extend the cache
                    newest = self._newest_ids(history, anchor, dataset)
                    ids = torch.cat([ids, newest[:, None]], 1)
                    stream.append(newest)
                elif k > 0:  # reference: the grown window re-encoded
                    ids = tok.encode(history[:, anchor:], dataset)
                if stream is not None:
                    logits = stream.logits()
                    picked = self.model._sample(logits.flatten(0, 1), temperature, top_k, generator)
                    new = picked.view(ids.shape[0], 1, *ids.shape[2:])
                else:
                    new = self.generate_tokens(
                        ids, 1, dataset, temperature, top_k, generator, use_cache
                    )
                history = self._append_decoded(history, anchor, ids, new, dataset, refine)
                new_tokens.append(new)
        out = tok.denormalize(history[:, n_in : n_in + horizon], dataset)
        return out, torch.cat(new_tokens, 1)

    def _append_decoded(self, history, anchor, ids, new, dataset, refine) -> torch.Tensor:
        """Decode the new token frame ``new`` (conditional: given the last history frame; plain:
        with the window's ids), refine it when asked and append its field frame(s) to
        ``history``."""
        tok, c, n_in = self.tokenizer, self.temporal_compression, self.n_input_frames
        if self.conditional:
            # [B, 1, C, *space]
            decoded = tok.decode_step(new[:, 0], history[:, -1], dataset)[:, None]
        else:
            w = history.shape[1] - anchor  # field frames of the window
            # [B, c, ...]
            decoded = tok.decode(torch.cat([ids, new], 1), dataset, n_frames=w + c)[:, w:]
        for j in range(decoded.shape[1]):
            step = history.shape[1] - n_in + 1  # 1 = the first predicted frame
            frame = self.refiner(decoded[:, j], history, dataset, step) if refine else decoded[:, j]
            history = torch.cat([history, frame[:, None]], dim=1)
        return history
