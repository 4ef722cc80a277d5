"""``PhysicsModel``: the user-facing model — a trained network + its tokenizer — and its rollout in
physical units.

    from physfm import PhysicsModel
    model = PhysicsModel.from_pretrained("runs/pretrain")      # a run, checkpoint or export directory
    pred = model.rollout(context, horizon=8, dataset="gray_scott2d")   # [T_in, C, *space] → [8, C, *space]

This class is kind-neutral: loading by the run's kind (run.json ``kind``), encode/decode with the
tokenizer (its own normalisation stats), input checks and batching of a rollout, the tokenizer's
baselines, describe. Each kind subclasses it with what only it has:
:class:`physfm.inference.ar_model.ARPhysicsModel` (token sampling: temperature, top-k, KV cache, the
refiner) and :class:`physfm.inference.diffusion_model.DiffusionPhysicsModel` (ODE sampling over
latents). ``from_pretrained`` returns the subclass of the run's kind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.errors import DataError, InputError
from physfm.core.errors import CheckpointError
from physfm.inference.loading import model_kind
from physfm.inference.sampling import option_names, unset
from tokenizer.model import field_frames, future_token_frames

# (context chunk [B, T_in, C, *space] physical, horizon, dataset) → (frames [B, horizon, C, *space],
# ids [B, n, *grid])
RolloutStep = Callable[[torch.Tensor, int, str], tuple[torch.Tensor, torch.Tensor]]


class PhysicsModel:
    """Network + tokenizer with a physical-units rollout; the base of every model kind (see the
    module docstring)."""

    kind: str  # the run.json kind a subclass loads
    label: str  # how messages name the kind ("AR", "diffusion")
    method: str  # the name evaluate/rollout give this model's predictions
    options_type: type  # the kind's options record (physfm.inference.sampling)
    refusal_hint = ""  # appended to the message refusing another kind's option
    # Only the AR kind has a refiner; every kind answers, since evaluate asks whether to score
    # ``ar_refined``.
    refiner = None
    refines_by_default = False  # a kind with a refiner says when its rollouts use it unasked
    refiner_meta: dict | None = None
    _kinds: dict[str, type[PhysicsModel]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            PhysicsModel._kinds[cls.kind] = cls

    def __init__(self, model, tokenizer, info: dict[str, Any]):
        if type(self) is PhysicsModel:
            raise TypeError(
                "PhysicsModel is kind-neutral: construct ARPhysicsModel or DiffusionPhysicsModel "
                "(physfm.inference), or load with PhysicsModel.from_pretrained"
            )
        self.model, self.tokenizer, self.info = model.eval(), tokenizer.eval(), info
        self.dataset_names: list[str] = list(info["dataset_names"])
        # token frames of context seen in training
        self.n_context_tokens = int(info["n_context_frames"])
        self.n_window_tokens = int(info["n_frames"])  # token frames per training window
        self.temporal_compression = int(tokenizer.cfg.temporal_compression)
        self.n_spatial_dims = int(tokenizer.cfg.n_spatial_dims)

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        location: str | Path,
        *,
        tokenizer: str | Path | None = None,
        device: str | torch.device = "cpu",
        **options: Any,
    ) -> PhysicsModel:
        """Load from a pretrain run directory, a checkpoint or an export directory, as the class of
        its kind.

        ``tokenizer``: override the tokenizer recorded in the run. ``options`` are the kind's own:
        for an AR model ``refiner`` ("auto" loads ``LOCATION/refiner`` or the run's when present, a
        path loads that one, False/None none); for a diffusion model ``sampling_steps``, ``sampler``
        ("euler"/"heun") and ``snap_to_codes`` (the load-time fields of the kind's record in
        :mod:`physfm.inference.sampling`). Another kind's option left unset (None, False, "auto") is
        ignored, so one call serves every kind; set, it is an InputError naming it."""
        location = Path(location)
        try:
            kind = model_kind(location)
        except CheckpointError as err:
            raise DataError(str(err)) from None
        if kind not in PhysicsModel._kinds:  # physfm.inference imports every kind's module
            raise DataError(f"{location}: model kind {kind!r} has no PhysicsModel class")
        kind_cls = PhysicsModel._kinds[kind]
        options = kind_cls._supported("load", options, f"{location}: ")
        return kind_cls._load(
            location, tokenizer=tokenizer, device=device, options=kind_cls.options_type(**options)
        )

    @classmethod
    def _load(
        cls,
        location: Path,
        *,
        tokenizer: str | Path | None,
        device: str | torch.device,
        options: Any,
    ) -> PhysicsModel:
        raise NotImplementedError

    @classmethod
    def _supported(cls, stage: str, options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """The ``options`` of this kind that apply at ``stage`` ("load" or "rollout"); another
        kind's are dropped when unset, else refused by name."""
        params = option_names(cls.options_type, stage)
        kinds = PhysicsModel._kinds.values()
        takers = {
            name: [c.label for c in kinds if name in option_names(c.options_type, stage)]
            for name in options
        }
        unknown = [name for name, labels in takers.items() if not labels]
        if unknown:
            raise TypeError(
                f"{prefix}unexpected option(s) {', '.join(unknown)}: no model kind takes them"
            )
        refused = [
            name for name, value in options.items() if name not in params and not unset(value)
        ]
        if refused:
            owners = sorted({label for name in refused for label in takers[name]})
            flags = ", ".join(f"{name} (--{name.replace('_', '-')})" for name in refused)
            article = "an" if cls.label[0] in "AEIOU" else "a"
            raise InputError(
                f"{prefix}{flags} apply to {'/'.join(owners)} models; "
                f"this is {article} {cls.label} model{cls.refusal_hint}"
            )
        return {name: value for name, value in options.items() if name in params}

    def rollout_options(self, **options: Any) -> dict[str, Any]:
        """For callers that serve every kind (evaluate): the ``options`` this model's
        :meth:`rollout` takes, another kind's left unset dropped; an InputError naming any other
        (e.g. a temperature for diffusion)."""
        return self._supported("rollout", options)

    def to(self, device: str | torch.device) -> PhysicsModel:
        self.model.to(device)
        self.tokenizer.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_input_frames(self) -> int:
        """Field frames of context the model reads (its training windows' context)."""
        return field_frames(self.n_context_tokens, self.temporal_compression)

    def channel_names(self, dataset: str) -> list[str]:
        return list(self.tokenizer.datasets[self.resolve_dataset(dataset)].channel_names)

    def resolve_dataset(self, dataset: str | None) -> str:
        if dataset is None:
            if len(self.dataset_names) == 1:
                return self.dataset_names[0]
            raise InputError(
                f"dataset: this model knows several ({', '.join(self.dataset_names)}); name one"
            )
        if dataset not in self.dataset_names:
            raise InputError(
                f"dataset {dataset!r} is unknown to this model (knows: {', '.join(self.dataset_names)})"
            )
        if dataset not in self.tokenizer.datasets:
            raise InputError(f"dataset {dataset!r} is unknown to the model's tokenizer")
        return dataset

    # ------------------------------------------------------------------------------ pieces
    @torch.no_grad()
    def encode(self, frames: torch.Tensor, dataset: str) -> torch.Tensor:
        """Physical-unit frames [B, T, C, *space] → token ids [B, T', *grid]."""
        tok = self.tokenizer
        return tok.encode(tok.normalize(frames.to(self.device).float(), dataset), dataset)

    @property
    def conditional(self) -> bool:
        """Whether the tokenizer codes each frame given the previous one (conditional tokens: the
        first frame of a window is a key frame, later frames carry the change; see
        tokenizer/model.py)."""
        return bool(getattr(self.tokenizer.cfg, "conditional", False))

    @torch.no_grad()
    def decode(
        self,
        ids: torch.Tensor,
        dataset: str,
        n_frames: int | None = None,
        prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids [B, T', *grid] → physical-unit frames [B, T, C, *space] (T = 1 + c (T'-1) or
        n_frames). Conditional tokens: ``prev`` [B, C, *space] (physical units) is the frame before
        the first one, and every frame decodes given the one before it; without ``prev`` the first
        frame is a key frame."""
        tok = self.tokenizer
        z_prev = None if prev is None else tok.normalize(prev.to(self.device).float(), dataset)
        options = {"prev": z_prev} if z_prev is not None else {}
        return tok.denormalize(
            tok.decode(ids.to(self.device), dataset, n_frames=n_frames, **options), dataset
        )

    def generate_tokens(
        self,
        context_ids: torch.Tensor,
        n_token_frames: int,
        dataset: str,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Context token frames [B, F, *grid] → the next ``n_token_frames`` [B, n, *grid] (steering,
        probing)."""
        raise NotImplementedError

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
        """Predict ``horizon`` frames after ``context`` ([T_in, C, *space] or [B, T_in, C, *space],
        physical units; the last ``n_input_frames`` are used) → [(B,) horizon, C, *space] on the
        context's device. ``seed`` seeds the model's sampling; ``batch_size`` windows run at once.
        With ``return_tokens`` also the generated token frames [(B,) n, *grid]."""
        return self._rollout(
            context, horizon, dataset, batch_size, return_tokens, self._rollout_step(seed)
        )

    def _rollout_step(self, seed: int) -> RolloutStep:
        """The kind's rollout of one batch of checked context windows."""
        raise NotImplementedError

    def _rollout(
        self,
        context,
        horizon: int,
        dataset: str | None,
        batch_size: int,
        return_tokens: bool,
        step: RolloutStep,
    ):
        """Check the context, run ``step`` on batches of ``batch_size`` windows, reassemble."""
        dataset = self.resolve_dataset(dataset)
        if horizon < 1:
            raise InputError(f"horizon: must be >= 1, got {horizon}")
        x = torch.as_tensor(
            np.asarray(context) if not isinstance(context, torch.Tensor) else context
        )
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
            raise InputError(
                f"context: the model reads {self.n_input_frames} frames, got {x.shape[1]}"
            )
        x = x[:, -self.n_input_frames :]
        frames, tokens = [], []
        for start in range(0, x.shape[0], batch_size):
            f, t = step(x[start : start + batch_size].to(self.device).float(), horizon, dataset)
            frames.append(f.to(x.device))
            tokens.append(t)
        out, ids = torch.cat(frames), torch.cat(tokens)
        if not batched:
            out, ids = out[0], ids[0]
        return (out, ids) if return_tokens else out

    # ------------------------------------------------------------------------------ baselines in
    # token space
    @torch.no_grad()
    def tokenizer_ceiling(
        self,
        context: torch.Tensor,
        truth: torch.Tensor,
        dataset: str,
        window_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The true future's own tokens decoded (no token model can do better): [B, H, C, *space].
        Conditional tokens decode each true frame's tokens given the true frame before it (what a
        one-step forecast of those tokens would give). ``window_ids``: context + truth already
        encoded."""
        window = torch.cat([context, truth], 1)
        if self.conditional:
            tok = self.tokenizer
            reconstruction, _ = tok.reconstruct(
                tok.normalize(window.to(self.device).float(), dataset), dataset
            )
            decoded = tok.denormalize(reconstruction, dataset)
        else:
            ids = self.encode(window, dataset) if window_ids is None else window_ids
            decoded = self.decode(ids, dataset, n_frames=window.shape[1])
        return decoded[:, context.shape[1] :].to(truth.device)

    @torch.no_grad()
    def copy_tokens(
        self,
        context: torch.Tensor,
        horizon: int,
        dataset: str,
        context_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last context token frame repeated and decoded: persistence in token space (for
        conditional tokens: the last change repeated from the last true frame). ``context_ids``: the
        context's token frames when already encoded."""
        c, n_in = self.temporal_compression, context.shape[1]
        ids = self.encode(context, dataset) if context_ids is None else context_ids.to(self.device)
        n_new = future_token_frames(horizon, c)
        repeated = ids[:, -1:].expand(-1, n_new, *ids.shape[2:])
        if self.conditional:
            return self.decode(repeated, dataset, prev=context[:, -1])[:, :horizon].to(
                context.device
            )
        ids = torch.cat([ids, repeated], 1)
        return self.decode(ids, dataset, n_frames=n_in + c * n_new)[:, n_in : n_in + horizon].to(
            context.device
        )

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
