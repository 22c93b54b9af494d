"""The KL-regularised autoencoder of latent diffusion, in the Stable Diffusion layout (Rombach et al. 2022).

| symbol | code                        | meaning                                                           |
| ------ | --------------------------- | ----------------------------------------------------------------- |
| x      | `x`                         | image `[B, 3, H, W]` in [-1, 1]; H and W multiples of f             |
| f      | `config.downsampling_factor`| 2^(levels-1); 8 for Stable Diffusion                               |
| q(z|x) | `DiagonalGaussian`          | N(mu, diag sigma^2) from encoder moments `[B, 2 C_lat, h, w]`       |
| z      | `z`                         | raw latent `[B, C_lat, H/f, W/f]`                                   |
| s, b   | `scaling_factor`, `shift_factor` | latents handed to diffusion are (z - b) * s (LDM §4.3.2, D.1)  |

`encode` returns the scaled latents a latent diffusion model works on; `decode` takes them back to images.
Parameter names are the LDM single-file names (see `autoencoder_blocks`), so a Stable Diffusion checkpoint
loads by stripping `first_stage_model.` (`ddpm.io.keymaps`); the SD 1.5 config has 83,653,863
parameters. Large images can be decoded in overlapping tiles blended linearly, which bounds activation
memory by the tile size; GroupNorm statistics are then per tile, so the result is close to, not equal to,
a whole-image decode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config.architectures import AutoencoderKLConfig
from ..noise import Generators, randn
from .autoencoder_blocks import Decoder, Encoder

__all__ = ["AutoencoderKLConfig", "AutoencoderKL", "DiagonalGaussian"]

# The LDM / diffusers clamp on the log-variance, so exp() stays finite in float16.
_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussian:
    """The approximate posterior q(z|x) = N(mean, diag exp(logvar)) over latents `[B, C, h, w]`
    (Kingma & Welling 2014, §2.4), from encoder moments `[B, 2C, h, w]` split on the channel axis."""

    def __init__(self, moments: Tensor):
        if moments.ndim != 4 or moments.shape[1] % 2:
            raise ValueError(f"moments must be [B, 2C, h, w]; got {tuple(moments.shape)}")
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, *, generator: Generators = None) -> Tensor:
        """z = mean + std * eps with eps drawn on the CPU (one generator, or one per sample)."""
        eps = randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        """The posterior mean `[B, C, h, w]`."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q(z|x) || N(0, I)) per sample `[B]`, summed over latent elements (Kingma & Welling 2014,
        App. B)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


def _tile_starts(n: int, tile: int, stride: int) -> list[int]:
    """Start offsets of `tile`-cell windows covering [0, n) with the given stride, the last flush right."""
    if n <= tile:
        return [0]
    return [*range(0, n - tile, stride), n - tile]


def _ramp(length: int, width: int, *, lead: bool, trail: bool, device: torch.device) -> Tensor:
    """Blend weights `[length]`: linear from ~0 to 1 over `width` cells at an edge shared with a neighbour,
    1 elsewhere; two tiles overlapping by exactly `width` then sum to 1 across the seam."""
    w = torch.ones(length, dtype=torch.float32, device=device)
    if width > 0:
        up = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + 1)
        if lead:
            w[:width] = torch.minimum(w[:width], up)
        if trail:
            w[length - width:] = torch.minimum(w[length - width:], up.flip(0))
    return w


class AutoencoderKL(nn.Module):
    """KL autoencoder `[B, 3, H, W] <-> [B, C_lat, H/f, W/f]` (LDM, Rombach et al. 2022, §3; Esser et al.
    2021 for the architecture), with the SD single-file parameter names."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        c = config
        kw = dict(latent_channels=c.latent_channels, base_channels=c.base_channels,
                  channel_mult=c.channel_mult, num_res_blocks=c.num_res_blocks, mid_attention=c.mid_attention,
                  norm_groups=c.norm_groups, norm_eps=c.norm_eps)
        self.encoder = Encoder(in_channels=c.in_channels, **kw)
        self.decoder = Decoder(out_channels=c.out_channels, **kw)
        moments = 2 * c.latent_channels
        self.quant_conv = nn.Conv2d(moments, moments, 1) if c.use_quant_conv else None
        self.post_quant_conv = (
            nn.Conv2d(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv else None
        )

    # ------------------------------------------------------------------------------------ latent scale
    def scale_latents(self, z: Tensor) -> Tensor:
        """Raw latents -> diffusion latents (z - b) * s."""
        if self.config.shift_factor is not None:
            z = z - self.config.shift_factor
        return z * self.config.scaling_factor

    def unscale_latents(self, latents: Tensor) -> Tensor:
        """Diffusion latents -> raw latents latents / s + b."""
        z = latents / self.config.scaling_factor
        return z if self.config.shift_factor is None else z + self.config.shift_factor

    # ------------------------------------------------------------------------------------------ encode
    def _check_image(self, x: Tensor) -> None:
        f = self.config.downsampling_factor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"encode expects images [B, {self.config.in_channels}, H, W] in [-1, 1]; got {tuple(x.shape)}"
            )
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"image height and width must be multiples of {f} for this autoencoder; got "
                f"{x.shape[2]}x{x.shape[3]}: crop or pad it (e.g. to "
                f"{x.shape[2] // f * f or f}x{x.shape[3] // f * f or f})"
            )

    def encode_posterior(self, x: Tensor) -> DiagonalGaussian:
        """q(z|x) over raw latents for images `[B, 3, H, W]` in [-1, 1] (LDM §3)."""
        self._check_image(x)
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments)

    def encode(self, x: Tensor, *, sample: bool = False, generator: Generators = None) -> Tensor:
        """Images `[B, 3, H, W]` in [-1, 1] -> scaled latents `[B, C_lat, H/f, W/f]`: the posterior mean, or a
        draw from q(z|x) with `sample=True`."""
        posterior = self.encode_posterior(x)
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return self.scale_latents(z)

    # ------------------------------------------------------------------------------------------ decode
    def decode_raw(self, z: Tensor) -> Tensor:
        """Raw (unscaled) latents `[B, C_lat, h, w]` -> images `[B, 3, f h, f w]`."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"decode expects latents [B, {self.config.latent_channels}, h, w]; got {tuple(z.shape)}"
            )
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def decode(self, latents: Tensor, *, tile: int | None = None, overlap: int | None = None) -> Tensor:
        """Scaled latents `[B, C_lat, h, w]` -> images `[B, 3, f h, f w]` (about [-1, 1]).

        With `tile`, latents larger than `tile` x `tile` cells (64 cells = 512 pixels for SD) are decoded in
        windows overlapping by `overlap` cells (default tile // 4) and blended linearly across each seam, so
        activation memory follows the tile size, not the image size.
        """
        z = self.unscale_latents(latents)
        if tile is None:
            return self.decode_raw(z)
        return self._decode_tiled(z, tile=tile, overlap=tile // 4 if overlap is None else overlap)

    def _decode_tiled(self, z: Tensor, *, tile: int, overlap: int) -> Tensor:
        if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
            raise ValueError(f"tile must be a positive number of latent cells (e.g. 64); got {tile!r}")
        if not isinstance(overlap, int) or not 0 <= overlap < tile:
            raise ValueError(f"overlap must be an integer in [0, tile); got {overlap!r} for tile={tile}")
        if z.ndim != 4:
            raise ValueError(f"decode expects latents [B, C, h, w]; got {tuple(z.shape)}")
        h, w = z.shape[-2:]
        if h <= tile and w <= tile:
            return self.decode_raw(z)
        f = self.config.downsampling_factor
        th, tw = min(tile, h), min(tile, w)
        ys, xs = _tile_starts(h, th, tile - overlap), _tile_starts(w, tw, tile - overlap)
        out: Tensor | None = None
        total = torch.zeros(h * f, w * f, dtype=torch.float32, device=z.device)
        for y0 in ys:
            wy = _ramp(th * f, overlap * f, lead=y0 > 0, trail=y0 + th < h, device=z.device)
            for x0 in xs:
                wx = _ramp(tw * f, overlap * f, lead=x0 > 0, trail=x0 + tw < w, device=z.device)
                part = self.decode_raw(z[:, :, y0:y0 + th, x0:x0 + tw]).float()
                if out is None:
                    out = part.new_zeros(part.shape[0], part.shape[1], h * f, w * f)
                weight = wy[:, None] * wx[None, :]
                rows, cols = slice(y0 * f, (y0 + th) * f), slice(x0 * f, (x0 + tw) * f)
                out[:, :, rows, cols] += part * weight
                total[rows, cols] += weight
        assert out is not None
        return (out / total).to(z.dtype)

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self, x: Tensor, *, sample: bool = True, generator: Generators = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruction `[B, 3, H, W]` through z ~ q(z|x) (or its mean), and the posterior (for the KL)."""
        posterior = self.encode_posterior(x)
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return self.decode_raw(z), posterior
