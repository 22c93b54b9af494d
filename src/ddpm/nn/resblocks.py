"""Residual blocks with a timestep embedding, and the UNet's up/down-sampling (DDPM Appendix B; ADM §3).

| symbol | code  | meaning                                                               |
| ------ | ----- | --------------------------------------------------------------------- |
| x      | `x`   | feature map `[B, C, H, W]`                                            |
| e      | `emb` | timestep (+ class) embedding `[B, E]`                                 |
| h      |       | conv(SiLU(GN(x))), then + W e (or AdaGN), then conv(drop(SiLU(GN(h)))) |

With `use_scale_shift_norm` the embedding gives a scale s and shift b applied after the second GroupNorm
(ADM's "AdaGN", Dhariwal & Nichol 2021 §3); otherwise it is added (DDPM). Parameter names
(`in_layers.2`, `emb_layers.1`, `out_layers.3`, `skip_connection`, `op`, `conv`) follow the LDM
checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norm import GroupNorm32, zero_module
from .transformer import SpatialTransformer

__all__ = ["Upsample", "Downsample", "ResBlock", "TimestepSequential"]


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling `[B, C, H, W] -> [B, C_out, 2H, 2W]`, then an optional 3x3 conv."""

    def __init__(self, channels: int, *, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("Upsample without a conv cannot change the channel count")
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Downsample(nn.Module):
    """x2 downsampling `[B, C, H, W] -> [B, C_out, H/2, W/2]`: a stride-2 3x3 conv, or 2x2 average pooling."""

    def __init__(self, channels: int, *, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if not use_conv and out_channels != channels:
            raise ValueError("Downsample without a conv cannot change the channel count")
        self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, kernel_size=2, stride=2) if self.op is None else self.op(x)


class ResBlock(nn.Module):
    """Residual block `[B, C, H, W], emb [B, E] -> [B, C_out, H', W']` (DDPM App. B; ADM §3 with
    `use_scale_shift_norm`, and `up`/`down` resampling inside the block, "BigGAN-style")."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        *,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        norm_groups: int = 32,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if up and down:
            raise ValueError("a ResBlock resamples up or down, not both")
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(norm_groups, channels, eps=norm_eps),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.resample: nn.Module | None = None
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(norm_groups, out_channels, eps=norm_eps),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, kernel_size=1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        norm_in, _, conv_in = self.in_layers
        h = F.silu(norm_in(x))
        if self.resample is not None:
            # ADM resamples the activations before the first conv and the skip path alike.
            h, x = self.resample(h), self.resample(x)
        h = conv_in(h)
        e = self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        norm_out, _, drop, conv_out = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, norm_out(h), 1 + scale)  # GN(h) * (1 + s) + b in one pass
        else:
            h = norm_out(h + e)
        h = conv_out(drop(F.silu(h)))
        return self.skip_connection(x) + h


class TimestepSequential(nn.Sequential):
    """A UNet stage: layers applied in order, each given what it needs (`emb` to ResBlocks, `context` to
    SpatialTransformers)."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x
