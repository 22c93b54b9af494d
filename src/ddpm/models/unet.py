"""One configurable UNet: the DDPM / Improved-DDPM / ADM pixel models and the Stable Diffusion 1.x latent
UNet.

| symbol | code                    | meaning                                                             |
| ------ | ----------------------- | ------------------------------------------------------------------- |
| x_t    | `x`                     | noisy input `[B, C_in, H, W]`                                        |
| t      | `t`                     | timesteps `[B]` (int or float; a scalar broadcasts)                  |
| y      | `class_labels`          | class ids `[B]` in 0 … K; K is the "null" class for guidance         |
| c      | `context`               | cross-attention tokens `[B, S, context_dim]` (e.g. text states)      |
| ds     | `attention_resolutions` | downsampling factors where attention sits: 1 = input size, 2 = half  |
| E      | `4 * model_channels`    | width of the timestep (+ class) embedding                            |
| p      | `patch_size`            | side of the pixel patches folded into channels before the stem conv  |
| (u, v) | `coord_channels`        | two extra stem inputs: the pixel's column and row, in [-1, 1]        |
| z      | `low_res`               | an SR model's (augmented) low-res input `[B, C_in, s, s]`            |
| a      | `aug_level`             | its augmentation level `[B]` in [0, 1], embedded beside t            |
| z_i    | `image_embed`           | an unCLIP decoder's image embedding `[B, image_embed_dim]`           |

The layout is the one of DDPM (Ho et al. 2020, App. B) as generalised by ADM (Dhariwal & Nichol 2021) and
LDM (Rombach et al. 2022): `input_blocks` (a stem conv, then per level `num_res_blocks` ResBlocks, each
optionally followed by attention, and a downsampler between levels), a `middle_block` (ResBlock,
attention, ResBlock) and `output_blocks` mirroring the input side with skip connections concatenated on
the channel axis. Three options for small models on small compute: `patch_size=p` folds each p x p patch of
the input into channels (pixel unshuffle) before the stem and unfolds the output the same way, so every
level runs at 1/p of the side (the "simple diffusion" patching of Hoogeboom et al. 2023); `context_pool`
adds a projection of the mean context token to the timestep embedding, so a prompt's summary modulates
every ResBlock beside the cross-attention at the attended levels (Imagen's pooled text embedding, Saharia
et al. 2022); `coord_channels` feeds the stem each position's coordinates (CoordConv, Liu et al. 2018), so
that "left of" and "above" have somewhere to attach: a convolution stack on pure noise otherwise knows
where it is only through the zero padding at the borders. With `low_res` set the UNet is a
super-resolution model (Ho et al. 2022, Cascaded Diffusion Models; Saharia et al. 2022, Imagen): the
low-res image is upsampled bilinearly to the input size and concatenated to x_t on the channel axis, and
its augmentation level gets its own embedding MLP, added to the timestep embedding (as DeepFloyd IF's stage
II does). With `image_embed_dim` set the UNet is an unCLIP decoder (Ramesh et al. 2022, Sec. 2.1): the
image embedding is projected into the timestep embedding and into `image_embed_tokens` tokens appended to
the cross-attention context (they are the whole context where no text is given).
Module names equal the Stable Diffusion
single-file checkpoint keys under `model.diffusion_model.`, so loading one is a prefix strip.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config.architectures import UNetConfig, heads_for
from ..nn import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    SpatialTransformer,
    TimestepSequential,
    Upsample,
    timestep_embedding,
    zero_module,
)

__all__ = ["UNetConfig", "UNet", "AUG_EMBED_SCALE"]

AUG_EMBED_SCALE = 1000.0  # an SR UNet embeds its aug level a in [0, 1] as a "timestep" a * 1000


def _coordinates(h: Tensor) -> Tensor:
    """`[B, 2, H, W]`: each cell's column and row centre, mapped to [-1, 1] (size-independent)."""
    b, _, height, width = h.shape
    v = torch.linspace(-1.0, 1.0, height, device=h.device, dtype=h.dtype)
    u = torch.linspace(-1.0, 1.0, width, device=h.device, dtype=h.dtype)
    return torch.stack(torch.meshgrid(v, u, indexing="ij")[::-1]).expand(b, 2, height, width)


class UNet(nn.Module):
    """`unet(x [B, C_in, H, W], t [B], *, class_labels [B] | None, context [B, S, D] | None)
    -> [B, C_out, H, W]`; the DDPM/ADM/LDM UNet (see module docstring)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        if isinstance(config, dict):
            config = UNetConfig.from_dict(config)
        self.config = cfg = config
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.channels_last = cfg.channels_last
        mc = cfg.model_channels
        emb_dim = 4 * mc

        def res(ch_in: int, ch_out: int, **kw: Any) -> ResBlock:
            return ResBlock(
                ch_in, emb_dim, out_channels=ch_out, dropout=cfg.dropout,
                use_scale_shift_norm=cfg.use_scale_shift_norm, norm_groups=cfg.norm_groups,
                norm_eps=cfg.norm_eps, **kw,
            )

        def attention(ch: int, ds: int = 0) -> nn.Module:
            heads, dim_head = heads_for(ch, num_heads=cfg.num_heads, num_head_channels=cfg.num_head_channels)
            if cfg.context_dim is None:
                return AttentionBlock(ch, heads=heads, norm_groups=cfg.norm_groups, norm_eps=cfg.norm_eps)
            return SpatialTransformer(
                ch, heads=heads, dim_head=dim_head, depth=cfg.transformer_depth, context_dim=cfg.context_dim,
                norm_groups=cfg.norm_groups, use_linear_projection=cfg.use_linear_projection,
                self_attention=ds not in cfg.cross_attention_only,
            )

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes is not None else None
        if cfg.context_pool and cfg.context_dim is None:
            raise ValueError(
                "UNetConfig.context_pool pools the cross-attention context: it needs context_dim "
                "(a text-conditioned model)"
            )
        self.context_emb = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_pool else None

        self.image_embed_proj = self.image_embed_tokens = None
        if cfg.image_embed_dim is not None:  # unCLIP: into the timestep embedding and k context tokens
            self.image_embed_proj = nn.Linear(cfg.image_embed_dim, emb_dim)
            self.image_embed_tokens = nn.Linear(cfg.image_embed_dim, cfg.image_embed_tokens * cfg.context_dim)

        self.aug_embed = None
        if cfg.low_res is not None:
            self.aug_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        p2 = cfg.patch_size**2
        image_channels = cfg.in_channels * (2 if cfg.low_res is not None else 1)
        stem = nn.Conv2d(image_channels * p2 + (2 if cfg.coord_channels else 0), mc, 3, padding=1)
        self.input_blocks = nn.ModuleList([TimestepSequential(stem)])
        skip_channels = [mc]
        ch, ds = mc, 1
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(attention(ch, ds))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                if cfg.resblock_updown:
                    down: nn.Module = res(ch, ch, down=True)
                else:
                    down = Downsample(ch, use_conv=cfg.conv_resample)
                self.input_blocks.append(TimestepSequential(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(res(ch, ch), attention(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(attention(ch, ds))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown
                                  else Upsample(ch, use_conv=cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(cfg.norm_groups, ch, eps=cfg.norm_eps),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, cfg.output_channels * p2, 3, padding=1)),
        )
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def null_class(self) -> int | None:
        """The class id meaning "no class" (classifier-free guidance), or None without a class embedding."""
        return self.config.num_classes

    def _check_low_res(
        self, x: Tensor, low_res: Tensor | None, aug_level: Tensor | float | None
    ) -> Tensor | None:
        """The aug levels `[B]` of an SR UNet (None otherwise), after checking both inputs."""
        lr = self.config.low_res
        if lr is None:
            if low_res is not None or aug_level is not None:
                raise ValueError("low_res / aug_level given to a UNet that is not a super-resolution model "
                                 "(set model.low_res)")
            return None
        b, c = x.shape[0], self.config.in_channels
        if low_res is None or aug_level is None:
            raise ValueError(
                f"this UNet is a super-resolution model: pass low_res [B, {c}, {lr['size']}, {lr['size']}] "
                "(the low-res image, in [-1, 1]) and aug_level [B] (its augmentation level in [0, 1])"
            )
        if low_res.ndim != 4 or low_res.shape[:2] != (b, c):
            raise ValueError(f"low_res must have shape [B={b}, {c}, h, w]; got {tuple(low_res.shape)}")
        a = torch.as_tensor(aug_level, device=x.device, dtype=torch.float32)
        if a.numel() == 1:
            a = a.reshape(1).expand(b)
        if a.shape != (b,):
            raise ValueError(f"aug_level must be a scalar or of shape [B]=[{b}]; got {tuple(a.shape)}")
        return a

    def _check_inputs(
        self, x: Tensor, t: Tensor | float | int, class_labels: Tensor | None, context: Tensor | None
    ) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet expects x of shape [B, {cfg.in_channels}, H, W]; got {tuple(x.shape)}")
        f = cfg.downsampling_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"UNet with {len(cfg.channel_mult)} levels"
                + (f" and {cfg.patch_size}x{cfg.patch_size} patches" if cfg.patch_size > 1 else "")
                + f" needs H and W divisible by {f}; got "
                f"{x.shape[2]}x{x.shape[3]} (pad or resize the input)"
            )
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(b)
        elif t.shape != (b,):
            raise ValueError(f"timesteps must be a scalar or of shape [B]=[{b}]; got {tuple(t.shape)}")
        if cfg.num_classes is None:
            if class_labels is not None:
                raise ValueError("class_labels given to a UNet without a class embedding (set num_classes)")
        else:
            if class_labels is None:
                raise ValueError(
                    f"this UNet is class-conditional: pass class_labels [B] with ids in 0..{cfg.num_classes} "
                    f"({cfg.num_classes} is the null class for unconditional/guidance use)"
                )
            if class_labels.shape != (b,) or class_labels.dtype.is_floating_point:
                raise ValueError(
                    f"class_labels must be an integer tensor of shape [{b}]; got {class_labels.dtype} "
                    f"{tuple(class_labels.shape)}"
                )
            if class_labels.device.type == "cpu" and class_labels.numel() and (
                int(class_labels.min()) < 0 or int(class_labels.max()) > cfg.num_classes
            ):
                raise ValueError(
                    f"class_labels must lie in 0..{cfg.num_classes} ({cfg.num_classes} = null class); got "
                    f"{int(class_labels.min())}..{int(class_labels.max())}"
                )
        if cfg.context_dim is None:
            if context is not None:
                raise ValueError("context given to a UNet without cross-attention (set context_dim)")
        else:
            if context is None:
                raise ValueError(
                    f"this UNet uses cross-attention: pass context [B, S, {cfg.context_dim}] (e.g. text "
                    "encoder states; the empty prompt's states for unconditional use)"
                )
            if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
                raise ValueError(
                    f"context must have shape [B={b}, S, {cfg.context_dim}]; got {tuple(context.shape)}"
                )
        return t

    def _run(self, block: nn.Module, h: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, use_reentrant=False)
        return block(h, emb, context)

    def forward(
        self,
        x: Tensor,
        t: Tensor | float | int,
        *,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
        low_res: Tensor | None = None,
        aug_level: Tensor | float | None = None,
        image_embed: Tensor | None = None,
    ) -> Tensor:
        """Predict from `x [B, C_in, H, W]` at timesteps `t [B]` -> `[B, C_out, H, W]` (C_out doubles with
        learned variance); an SR UNet also takes `low_res [B, C_in, s, s]` and `aug_level [B]`, an unCLIP
        decoder `image_embed [B, E]`."""
        cfg = self.config
        z_tokens = None
        if cfg.image_embed_dim is None:
            if image_embed is not None:
                raise ValueError("image_embed given to a UNet that is not an unCLIP decoder (set "
                                 "model.image_embed_dim)")
        else:
            if image_embed is None or image_embed.shape != (x.shape[0], cfg.image_embed_dim):
                got = None if image_embed is None else tuple(image_embed.shape)
                raise ValueError(f"this UNet is an unCLIP decoder: pass image_embed [B={x.shape[0]}, "
                                 f"{cfg.image_embed_dim}] (an image embedding of its encoder); got {got}")
            z = image_embed.to(self.image_embed_tokens.weight.dtype)
            z_tokens = self.image_embed_tokens(z).view(x.shape[0], cfg.image_embed_tokens, cfg.context_dim)
            context = z_tokens if context is None else torch.cat([context, z_tokens.to(context.dtype)], 1)
        t = self._check_inputs(x, t, class_labels, context)
        a = self._check_low_res(x, low_res, aug_level)
        t_emb = timestep_embedding(
            t, cfg.model_channels, flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift
        )
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))
        if self.label_emb is not None:
            emb = emb + self.label_emb(class_labels)
        if self.context_emb is not None:
            emb = emb + self.context_emb(context.mean(dim=1).to(emb.dtype))
        if z_tokens is not None:
            emb = emb + self.image_embed_proj(image_embed.to(emb.dtype))
        if a is not None:
            a_emb = timestep_embedding(a * AUG_EMBED_SCALE, cfg.model_channels,
                                       flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift)
            emb = emb + self.aug_embed(a_emb.to(emb.dtype))
            up = F.interpolate(low_res.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, up], dim=1)
        h = F.pixel_unshuffle(x, cfg.patch_size) if cfg.patch_size > 1 else x
        if cfg.coord_channels:
            h = torch.cat([h, _coordinates(h)], dim=1)
        h = h.contiguous(memory_format=torch.channels_last) if self.channels_last else h
        skips = []
        for block in self.input_blocks:
            h = self._run(block, h, emb, context)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context)
        h = self.out(h)
        return (F.pixel_shuffle(h, cfg.patch_size) if cfg.patch_size > 1 else h).contiguous()
