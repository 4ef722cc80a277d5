"""A U-Net forecasting baseline (bench/transfer.py): the classic encoder-decoder of Ronneberger et
al. (2015) in 1D, 2D or 3D, trained and rolled out as the FNO (bench/fno_baseline.py): the
``n_input`` context frames stacked on channels in, the next frame out, z-scored fields, MSE, AdamW
with a cosine schedule over the time budget.

Written here rather than imported: The Well's own U-Nets live in ``the_well.benchmark.models``,
whose package init imports every model, and two of those (AFNO via timm/torchvision, FNO via
neuraloperator 0.3 / torch_harmonics / triton) do not import on a CPU-only torch build
(/work/shared/reference/the-well-and-baselines.md). This is the textbook network: per level two 3x3
convolutions with batch norm and an activation, max-pool down, transposed convolution up, skip
connections by concatenation.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.fno_baseline import fno_forecaster, train_field_model
from data_pipelines.manifest import Manifest

UNET_SETTINGS = dict(features=32, max_levels=4, lr=1e-3, weight_decay=1e-5, batch_size=8)

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_UP = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


def unet_levels(spatial_shape: tuple[int, ...], max_levels: int) -> int:
    """Down-sampling levels a grid allows: each halves every axis, which must stay even and >= 2."""
    levels = 0
    while levels < max_levels and all(
        n % 2 ** (levels + 1) == 0 and n // 2 ** (levels + 1) >= 2 for n in spatial_shape
    ):
        levels += 1
    return levels


def _block(n_dims: int, c_in: int, c_out: int) -> nn.Sequential:
    conv, norm = _CONV[n_dims], _NORM[n_dims]
    return nn.Sequential(
        conv(c_in, c_out, 3, padding=1, bias=False),
        norm(c_out),
        nn.Tanh(),
        conv(c_out, c_out, 3, padding=1, bias=False),
        norm(c_out),
        nn.Tanh(),
    )


class UNet(nn.Module):
    """``levels`` poolings with ``features * 2**level`` channels, a bottleneck, and the mirrored
    decoder; a 1x1 convolution maps the top level's features to ``c_out`` channels."""

    def __init__(self, n_dims: int, c_in: int, c_out: int, features: int, levels: int):
        super().__init__()
        widths = [features * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(
            _block(n_dims, a, b) for a, b in zip([c_in, *widths[:-2]], widths[:-1])
        )
        self.pool = _POOL[n_dims](2)
        self.bottleneck = _block(n_dims, widths[-2] if levels else c_in, widths[-1])
        self.up = nn.ModuleList(
            _UP[n_dims](widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(levels))
        )
        self.decode = nn.ModuleList(
            _block(n_dims, 2 * widths[i], widths[i]) for i in reversed(range(levels))
        )
        self.out = _CONV[n_dims](widths[0], c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block in zip(self.up, self.decode):
            x = block(torch.cat([up(x), skips.pop()], 1))
        return self.out(x)


def train_unet(shards, name: str, n_channels: int, seconds: float, seed: int, n_input: int):
    """The U-Net on one dataset for ``seconds`` of wall-clock → (model, normalizer, steps,
    n_params), as ``train_fno``."""
    torch.manual_seed(seed)
    shape = tuple(Manifest.load(shards).dataset(name).spatial_shape or ())
    s = UNET_SETTINGS
    model = UNet(
        len(shape),
        n_input * n_channels,
        n_channels,
        s["features"],
        unet_levels(shape, s["max_levels"]),
    )
    return train_field_model(model, shards, name, seconds, seed, s)


# Rolled out exactly as the FNO: the same stacking of frames on channels.
unet_forecaster = fno_forecaster
