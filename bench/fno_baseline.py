"""The Well's FNO as a forecasting baseline (bench/forecast.py): trained for a wall-clock budget on
one dataset's field shards, rolled out autoregressively from ``n_input`` context frames stacked on
channels.

neuralop 2.0.0 ``FNO`` with The Well's settings (16 modes per axis, 128 hidden channels, 4 Fourier
layers), z-scored fields, MSE, AdamW; The Well trained at lr 1e-4 for 12 GPU hours, on a few CPU
minutes we use 1e-3 with a cosine schedule over the time budget (5 % warm-up). The schedule follows
elapsed time, not steps, as the step count is what the budget decides.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from data_pipelines.loader import Normalizer, make_loader
from data_pipelines.manifest import Manifest

# The Well's FNO
FNO_SETTINGS = dict(modes=16, hidden_channels=128, lr=1e-3, weight_decay=1e-5, batch_size=8)


def train_fno(shards, name: str, n_channels: int, seconds: float, seed: int, n_input: int):
    """The Well's FNO on one dataset for ``seconds`` of wall-clock → (model, normalizer, steps,
    n_params)."""
    from neuralop.models import FNO  # optional dependency: only this bench needs it

    torch.manual_seed(seed)
    n_dims = len(Manifest.load(shards).dataset(name).spatial_shape or ())
    s = FNO_SETTINGS
    model = FNO(
        n_modes=(s["modes"],) * n_dims,
        in_channels=n_input * n_channels,
        out_channels=n_channels,
        hidden_channels=s["hidden_channels"],
    )
    return train_field_model(model, shards, name, seconds, seed, s)


def train_field_model(model: torch.nn.Module, shards, name: str, seconds: float, seed: int, s):
    """Fit ``model`` (context frames stacked on channels in, the next frame out, z-scored fields)
    to one dataset's training windows for ``seconds`` of wall-clock with MSE and AdamW (settings
    ``s``: lr, weight_decay, batch_size) → (model, normalizer, steps, n_params)."""
    manifest = Manifest.load(shards)
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    loader = make_loader(
        str(shards),
        "train",
        s["batch_size"],
        resampled=True,
        batches_per_epoch=10**7,
        dataset_weights={name: 1.0},
        normalize=True,
        seed=seed,
    )
    start, steps = time.perf_counter(), 0
    model.train()
    for batch in loader:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        for group in opt.param_groups:  # cosine over the time budget, 5 % warm-up
            progress = elapsed / seconds
            group["lr"] = s["lr"] * (
                progress / 0.05 if progress < 0.05 else 0.5 * (1 + math.cos(math.pi * progress))
            )
        # [B, T_in * C, *space]: frames stacked on channels, as The Well
        x = batch["input"].flatten(1, 2)
        loss = torch.nn.functional.mse_loss(model(x), batch["output"][:, 0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return (
        model.eval(),
        Normalizer(manifest, name),
        steps,
        sum(p.numel() for p in model.parameters()),
    )


def fno_forecaster(models: dict, n_input: int) -> Callable:
    """{dataset: (model, normalizer, ...)} → forecast(ctx [B, T, C, *space] physical, horizon,
    dataset)."""

    @torch.no_grad()
    def forecast(ctx: torch.Tensor, horizon: int, name: str) -> torch.Tensor:
        model, norm = models[name][:2]
        z = norm.normalize(ctx.float())
        for _ in range(horizon):
            z = torch.cat([z, model(z[:, -n_input:].flatten(1, 2))[:, None]], 1)
        return norm.denormalize(z[:, ctx.shape[1] :])

    return forecast
