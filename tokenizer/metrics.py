"""The project's metrics, shared by tokenizer eval, physfm evaluate/fine-tune and the benches.

Field metrics take tensors laid out ``[..., C, *space]`` (the shard layout) and reduce over space
only, returning ``[..., C]`` — one value per sample (and frame) and field. Pass ``channel_axis=-1``
for The Well's channels-last layout ``[..., *space, C]``.

VRMSE is The Well's definition, matched bit-for-bit against ``the_well.benchmark.metrics.VRMSE`` in
the tests: ``sqrt(mean_space((pred - true)^2) / (var_space(true) + eps))`` with the *unbiased*
spatial variance (The Well computes it as ``torch.std(...) ** 2``) and ``eps = 1e-7``. VRMSE 1.0 is
what predicting the spatial mean of each field scores. It is invariant to a per-field affine change
of units, so z-scored and physical-unit tensors give the same value up to the eps term; report it in
physical units anyway.
"""

from __future__ import annotations

import math

import torch


def _channels_before_space(
    x: torch.Tensor, n_spatial_dims: int, channel_axis: int | None
) -> torch.Tensor:
    if x.ndim < n_spatial_dims + 1:
        raise ValueError(
            f"expected at least {n_spatial_dims + 1} axes [..., C, *space], got shape {tuple(x.shape)}"
        )
    if channel_axis is None:
        return x
    return x.movedim(channel_axis, -(n_spatial_dims + 1))


def _as_tensors(
    pred, true, n_spatial_dims: int, channel_axis: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    pred, true = torch.as_tensor(pred), torch.as_tensor(true)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != truth shape {tuple(true.shape)}")
    pred = _channels_before_space(pred, n_spatial_dims, channel_axis)
    true = _channels_before_space(true, n_spatial_dims, channel_axis)
    return pred, true


def _space(n_spatial_dims: int) -> tuple[int, ...]:
    return tuple(range(-n_spatial_dims, 0))


def mse(pred, true, n_spatial_dims: int, channel_axis: int | None = None) -> torch.Tensor:
    """Mean squared error over space → [..., C]."""
    pred, true = _as_tensors(pred, true, n_spatial_dims, channel_axis)
    return ((pred - true) ** 2).mean(dim=_space(n_spatial_dims))


def vrmse(
    pred, true, n_spatial_dims: int, channel_axis: int | None = None, eps: float = 1e-7
) -> torch.Tensor:
    """Variance-scaled RMSE per sample and field (The Well): [..., C, *space] → [..., C]."""
    pred, true = _as_tensors(pred, true, n_spatial_dims, channel_axis)
    space = _space(n_spatial_dims)
    err = ((pred - true) ** 2).mean(dim=space)
    # unbiased, exactly as the_well.benchmark.metrics.NMSE(norm_mode="std")
    var = torch.std(true, dim=space) ** 2
    return torch.sqrt(err / (var + eps))


def psnr(
    pred, true, n_spatial_dims: int, channel_axis: int | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample and field, the peak being the truth's spatial
    range.

    ``10 log10(range(true)^2 / mse)``; fields of physics data have no fixed peak (unlike 8-bit
    images), so each sample's own max - min over space is used. → [..., C].
    """
    pred, true = _as_tensors(pred, true, n_spatial_dims, channel_axis)
    space = _space(n_spatial_dims)
    err = ((pred - true) ** 2).mean(dim=space)
    flat = true.flatten(start_dim=true.ndim - n_spatial_dims)
    peak = flat.amax(dim=-1) - flat.amin(dim=-1)
    return 10.0 * torch.log10((peak**2 + eps) / (err + eps))


# ---------------------------------------------------------------------- codebook statistics
def code_counts(ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Histogram of token ids (any shape) over the codebook → int64 [codebook_size]."""
    ids = torch.as_tensor(ids).reshape(-1).long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= codebook_size):
        raise ValueError(
            f"token ids outside [0, {codebook_size}): range [{int(ids.min())}, {int(ids.max())}]"
        )
    return torch.bincount(ids, minlength=codebook_size)


def code_usage(counts: torch.Tensor) -> float:
    """Fraction of the codebook used at least once, from :func:`code_counts`."""
    return float((counts > 0).sum()) / counts.numel()


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the empirical code distribution: the effective number of codes in use."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0].double() / total
    return float(math.exp(-(p * p.log()).sum()))


class CodeStats:
    """Running code histogram, for usage/perplexity over a whole validation set, batch by batch."""

    def __init__(self, codebook_size: int):
        self.counts = torch.zeros(codebook_size, dtype=torch.int64)

    def update(self, ids: torch.Tensor) -> None:
        self.counts += code_counts(ids.detach().cpu(), self.counts.numel())

    def summary(self) -> dict[str, float]:
        return {
            "code_usage": code_usage(self.counts),
            "perplexity": perplexity(self.counts),
            "n_tokens": int(self.counts.sum()),
        }
