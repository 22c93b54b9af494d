"""The encoder and decoder of the LDM KL-autoencoder (Rombach et al. 2022, §3 and App. G), module for module.

| symbol | code              | meaning                                                                 |
| ------ | ----------------- | ----------------------------------------------------------------------- |
| x      | `x`               | image `[B, C_img, H, W]` in [-1, 1]                                       |
| h      | `h`               | feature map `[B, C, H', W']`                                              |
| L      | `len(channel_mult)` | levels; the image shrinks by f = 2^(L-1) (f = 8 for Stable Diffusion)    |
| z      | `z`               | latent `[B, C_lat, H/f, W/f]`; the encoder emits 2 C_lat moments         |

Module names are those of the LDM single-file checkpoints (`down.N.block.M.norm1`, `mid.attn_1.q`,
`up.N.upsample.conv`, …), so a Stable Diffusion file loads by stripping `first_stage_model.`. These blocks
differ from the UNet's in `ddpm.nn`: the residual blocks take no timestep embedding and are named
`norm1/conv1/norm2/conv2/nin_shortcut`, attention uses separate 1x1-conv projections `q/k/v/proj_out`,
and downsampling pads asymmetrically. `GroupNorm32` and the nearest-neighbour `Upsample` are shared.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import GroupNorm32, Upsample

__all__ = ["ResnetBlock", "AttnBlock", "Downsample", "Encoder", "Decoder"]


class ResnetBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))) with a 1x1 `nin_shortcut` when widths differ (LDM App. G),
    `[B, C_in, H, W] -> [B, C_out, H, W]`."""

    def __init__(self, in_channels: int, out_channels: int, *, norm_groups: int, norm_eps: float):
        super().__init__()
        self.norm1 = GroupNorm32(norm_groups, in_channels, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm32(norm_groups, out_channels, eps=norm_eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Residual single-head self-attention over the pixels of `[B, C, H, W]`, with 1x1-conv projections
    (LDM's `AttnBlock`; softmax(Q K^T / sqrt(C)) V, Vaswani et al. 2017 Eq. 1)."""

    def __init__(self, channels: int, *, norm_groups: int, norm_eps: float):
        super().__init__()
        self.norm = GroupNorm32(norm_groups, channels, eps=norm_eps)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1, L, C]: one head of width C over L = H*W tokens.
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, hgt, wid)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """x2 downsampling `[B, C, H, W] -> [B, C, H/2, W/2]`: zero-pad right and bottom by one, then a stride-2
    3x3 conv without padding (LDM's asymmetric variant; differs from the UNet's symmetric one)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class _Mid(nn.Module):
    """ResnetBlock, optional attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, *, attention: bool, norm_groups: int, norm_eps: float):
        super().__init__()
        kw = dict(norm_groups=norm_groups, norm_eps=norm_eps)
        self.block_1 = ResnetBlock(channels, channels, **kw)
        self.attn_1 = AttnBlock(channels, **kw) if attention else None
        self.block_2 = ResnetBlock(channels, channels, **kw)

    def forward(self, h: Tensor) -> Tensor:
        h = self.block_1(h)
        if self.attn_1 is not None:
            h = self.attn_1(h)
        return self.block_2(h)


class _Level(nn.Module):
    """One resolution: `block` (a list of ResnetBlocks) and an optional `downsample` / `upsample`."""

    def __init__(self, blocks: list[ResnetBlock], *, downsample: nn.Module | None = None,
                 upsample: nn.Module | None = None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample
        self.upsample = upsample


class Encoder(nn.Module):
    """Image `[B, C_img, H, W]` -> moments `[B, 2 C_lat, H/f, W/f]` (LDM `Encoder` with `double_z`)."""

    def __init__(
        self,
        *,
        in_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        mid_attention: bool,
        norm_groups: int,
        norm_eps: float,
    ):
        super().__init__()
        kw = dict(norm_groups=norm_groups, norm_eps=norm_eps)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        widths = [base_channels * m for m in channel_mult]
        self.down = nn.ModuleList()
        block_in = base_channels
        for i, width in enumerate(widths):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, width, **kw))
                block_in = width
            last = i == len(widths) - 1
            self.down.append(_Level(blocks, downsample=None if last else Downsample(width)))
        self.mid = _Mid(block_in, attention=mid_attention, **kw)
        self.norm_out = GroupNorm32(norm_groups, block_in, eps=norm_eps)
        self.conv_out = nn.Conv2d(block_in, 2 * latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if level.downsample is not None:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent `[B, C_lat, h, w]` -> image `[B, C_img, f h, f w]` (LDM `Decoder`; `up.N` is stored in level
    order N = 0 … L-1 but run from the lowest resolution up, with `num_res_blocks + 1` blocks a level)."""

    def __init__(
        self,
        *,
        out_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        mid_attention: bool,
        norm_groups: int,
        norm_eps: float,
    ):
        super().__init__()
        kw = dict(norm_groups=norm_groups, norm_eps=norm_eps)
        widths = [base_channels * m for m in channel_mult]
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(latent_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, attention=mid_attention, **kw)
        levels: list[_Level] = []
        for i in reversed(range(len(widths))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, widths[i], **kw))
                block_in = widths[i]
            levels.append(_Level(blocks, upsample=Upsample(block_in) if i > 0 else None))
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = GroupNorm32(norm_groups, block_in, eps=norm_eps)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
