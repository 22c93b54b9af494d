"""Architecture configs: the hyper-parameters of the UNet and the KL autoencoder, torch-free, so that a
run config (`[model]`, `[autoencoder]`) and a model file's metadata are checked without building a model.
The networks themselves live in `ddpm.models` (`UNet(config)`, `AutoencoderKL(config)`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import DictConfig

__all__ = ["UNetConfig", "LowResConfig", "AutoencoderKLConfig", "heads_for", "LOW_RES_AUGMENTS"]

LOW_RES_AUGMENTS = ("gaussian", "none")  # noise-conditioning augmentation of an SR model's low-res input


def heads_for(channels: int, *, num_heads: int, num_head_channels: int | None) -> tuple[int, int]:
    """(heads, channels per head) for a layer of width `channels`: a fixed head width when
    `num_head_channels` is given (ADM), else a fixed head count (DDPM, SD 1.x)."""
    if num_head_channels is not None:
        if num_head_channels < 1 or channels % num_head_channels:
            raise ValueError(
                f"num_head_channels={num_head_channels} must divide every attention width; {channels} is not "
                "a multiple (choose a divisor, or set num_head_channels=None and use num_heads)"
            )
        return channels // num_head_channels, num_head_channels
    if num_heads < 1 or channels % num_heads:
        raise ValueError(
            f"num_heads={num_heads} must divide every attention width; {channels} is not a multiple "
            "(choose a divisor, or use num_head_channels)"
        )
    return num_heads, channels // num_heads


@dataclass
class UNetConfig(DictConfig):
    """Hyper-parameters of `UNet`; JSON-able through `to_dict` / `from_dict`.

    `attention_resolutions` holds downsampling factors (as in LDM/SD configs), not pixel sizes: for a 32x32
    input, `(2,)` puts attention at 16x16. `out_channels` is the predicted quantity's channel count; with
    `learned_variance` the network outputs twice as many (the second half parameterises the variance,
    Improved DDPM Eq. 15). With `num_classes=K` the class table has K+1 rows, the last being the "null"
    class used for classifier-free guidance. `context_dim` switches attention layers to LDM spatial
    transformers with cross-attention; at the factors in `cross_attention_only` the transformer's first
    attention attends the context too instead of the pixels (LDM's `disable_self_attentions`, diffusers'
    `only_cross_attention`: the SD x4 upscaler has it at 2, 4 and not 8). With `image_embed_dim` the UNet
    is an unCLIP decoder (DALL·E 2, Ramesh et al. 2022, Sec. 2.1): an image embedding `[B, E]` is projected
    into the timestep embedding and into `image_embed_tokens` extra cross-attention tokens.
    """

    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (2,)
    dropout: float = 0.0
    num_heads: int = 1
    num_head_channels: int | None = None
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    learned_variance: bool = False
    num_classes: int | None = None
    context_dim: int | None = None
    transformer_depth: int = 1
    use_linear_projection: bool = False
    conv_resample: bool = True
    norm_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    gradient_checkpointing: bool = False
    channels_last: bool = False
    patch_size: int = 1
    context_pool: bool = False
    coord_channels: bool = False
    cross_attention_only: tuple[int, ...] = ()
    low_res: dict[str, Any] | None = None
    image_embed_dim: int | None = None
    image_embed_tokens: int = 4

    def __post_init__(self) -> None:
        if self.low_res is not None:  # checked and completed, kept a JSON-able dict for model files
            if isinstance(self.low_res, LowResConfig):
                self.low_res = self.low_res.to_dict()
            if not isinstance(self.low_res, dict):
                raise ValueError(f"UNetConfig.low_res must be a table such as {{size = 16, augment = "
                                 f"\"gaussian\"}}; got {self.low_res!r}")
            self.low_res = LowResConfig.from_dict(self.low_res).to_dict()
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(sorted({int(r) for r in self.attention_resolutions}))
        self.cross_attention_only = tuple(sorted({int(r) for r in self.cross_attention_only}))
        for name in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "transformer_depth",
                     "norm_groups", "num_heads", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer; got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"UNetConfig.channel_mult must be a non-empty list of positive ints; got "
                             f"{self.channel_mult}")
        factors = [2**i for i in range(len(self.channel_mult))]
        bad = [r for r in self.attention_resolutions if r not in factors]
        if bad:
            raise ValueError(
                f"UNetConfig.attention_resolutions holds downsampling factors, one of {factors} for "
                f"{len(self.channel_mult)} levels; got {bad} (for attention at 16x16 of a 32x32 input, "
                "write 2)"
            )
        stray = [r for r in self.cross_attention_only if r not in self.attention_resolutions]
        if stray:
            raise ValueError(
                "UNetConfig.cross_attention_only holds factors with attention "
                f"({list(self.attention_resolutions)}); got {stray} without attention"
            )
        if self.cross_attention_only and self.context_dim is None:
            raise ValueError("UNetConfig.cross_attention_only needs context_dim (a cross-attention UNet)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must lie in [0, 1); got {self.dropout}")
        if self.norm_eps <= 0:
            raise ValueError(f"UNetConfig.norm_eps must be positive; got {self.norm_eps}")
        if self.image_embed_dim is not None and self.context_dim is None:
            raise ValueError("UNetConfig.image_embed_dim (an unCLIP decoder) needs context_dim: the "
                             "embedding also becomes image_embed_tokens cross-attention tokens")
        if not isinstance(self.image_embed_tokens, int) or self.image_embed_tokens < 1:
            raise ValueError(f"UNetConfig.image_embed_tokens must be a positive integer; got "
                             f"{self.image_embed_tokens!r}")
        for name in ("num_classes", "context_dim", "num_head_channels", "image_embed_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"UNetConfig.{name} must be None or a positive integer; got {value!r}")
        widths = sorted({self.model_channels * m for m in self.channel_mult})
        for w in widths:
            if w % self.norm_groups:
                raise ValueError(
                    f"UNetConfig.norm_groups={self.norm_groups} must divide every level's width "
                    f"(model_channels * channel_mult = {widths}); {w} is not a multiple"
                )
        # Attention widths: the attended levels and the middle block.
        attended = {self.model_channels * self.channel_mult[factors.index(r)]
                    for r in self.attention_resolutions}
        for w in sorted(attended | {self.model_channels * self.channel_mult[-1]}):
            heads_for(w, num_heads=self.num_heads, num_head_channels=self.num_head_channels)

    # ----------------------------------------------------------------------------------------- derived
    @property
    def output_channels(self) -> int:
        """Channels of the network output: `out_channels`, doubled with `learned_variance`."""
        return self.out_channels * (2 if self.learned_variance else 1)

    @property
    def low_res_config(self) -> LowResConfig | None:
        """The typed `low_res` of a super-resolution UNet, else None."""
        return None if self.low_res is None else LowResConfig.from_dict(self.low_res)

    @property
    def downsampling_factor(self) -> int:
        """patch_size * 2^(levels-1): H and W of the input must be multiples of it."""
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)

    # ----------------------------------------------------------------------------------------- presets
    @classmethod
    def ddpm_cifar10(cls, **overrides: Any) -> UNetConfig:
        """DDPM's CIFAR-10 model (Ho et al. 2020, App. B): 35.7M parameters, attention at 16x16."""
        base = dict(
            in_channels=3, out_channels=3, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
            attention_resolutions=(2,), dropout=0.1, num_heads=1, norm_eps=1e-6,
            flip_sin_to_cos=False, freq_shift=1.0,  # the TF release writes [sin, cos] over half-1 steps
        )
        return cls.from_dict({**base, **overrides})

    @classmethod
    def iddpm_cifar10(cls, **overrides: Any) -> UNetConfig:
        """Improved DDPM's CIFAR-10 model (Nichol & Dhariwal 2021, §4 and released flags): 3 ResBlocks per
        level, attention at 16x16 and 8x8 with 4 heads, scale-shift norm, learned variance, dropout 0.3."""
        base = dict(
            in_channels=3, out_channels=3, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=3,
            attention_resolutions=(2, 4), dropout=0.3, num_heads=4, use_scale_shift_norm=True,
            learned_variance=True, flip_sin_to_cos=True, freq_shift=0.0,
        )
        return cls.from_dict({**base, **overrides})

    @classmethod
    def sd15(cls, in_channels: int = 4, **overrides: Any) -> UNetConfig:
        """The Stable Diffusion 1.x latent UNet (Rombach et al. 2022): 859.52M parameters for 4 channels."""
        base = dict(
            in_channels=in_channels, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4),
            num_res_blocks=2, attention_resolutions=(1, 2, 4), num_heads=8, context_dim=768,
            transformer_depth=1, use_linear_projection=False, norm_eps=1e-5,
            flip_sin_to_cos=True, freq_shift=0.0,
        )
        return cls.from_dict({**base, **overrides})

    @classmethod
    def sd15_inpainting(cls, **overrides: Any) -> UNetConfig:
        """SD 1.5 inpainting: 9 input channels (latent 4 + mask 1 + masked-image latent 4)."""
        return cls.sd15(in_channels=9, **overrides)

    @classmethod
    def sd21(cls, **overrides: Any) -> UNetConfig:
        """The Stable Diffusion 2.x latent UNet: 64-channel heads, linear projections, context width 1024."""
        base = cls.sd15().to_dict()
        base.update(num_heads=1, num_head_channels=64, context_dim=1024, use_linear_projection=True)
        return cls.from_dict({**base, **overrides})

    @classmethod
    def small(
        cls,
        *,
        in_channels: int = 1,
        out_channels: int | None = None,
        model_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        num_classes: int | None = None,
        context_dim: int | None = None,
        **overrides: Any,
    ) -> UNetConfig:
        """A small model for 16x16 / 32x32 CPU training: attention only at the lowest resolution (and in
        the middle block), 16-channel heads, scale-shift norm, channels_last (faster convolutions on CPU);
        1.19M parameters for 1-channel 16x16 with 10 classes."""
        base = dict(
            in_channels=in_channels, out_channels=out_channels or in_channels, model_channels=model_channels,
            channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks,
            attention_resolutions=(2 ** (len(channel_mult) - 1),), num_heads=1, num_head_channels=16,
            use_scale_shift_norm=True, num_classes=num_classes, context_dim=context_dim,
            norm_groups=8, dropout=0.0, channels_last=True,
        )
        return cls.from_dict({**base, **overrides})


@dataclass
class LowResConfig(DictConfig):
    """A super-resolution UNet's low-resolution input (`[model] low_res`; Ho et al. 2022, "Cascaded
    Diffusion Models", Sec. 3; Saharia et al. 2022, Imagen, Sec. 2.5).

    `size`: side of the low-res image; the UNet upsamples it bilinearly to its own input size and
    concatenates it on the channel axis. `augment`: "gaussian" noises the low-res input to a level
    a in [0, 1] of the model's own schedule (z = sqrt(ab(a)) x + sqrt(1 - ab(a)) eps), drawn per training
    sample from U[0, `aug_max`] (`aug_max` < 1: the truncated form) and told to the network through its own
    embedding; "none" trains on clean inputs (a = 0), the ablation the papers warn against. `aug_level`: the
    level sampling uses unless a call says otherwise (0.25 of the schedule). `blur`: [lo, hi] standard
    deviations, in low-res pixels, of a Gaussian blur applied in training with probability `blur_prob` and
    sigma ~ U[lo, hi] (Ho et al.'s blur augmentation); None for none.
    """

    size: int = 16
    augment: str = "gaussian"
    aug_max: float = 1.0
    aug_level: float = 0.25
    blur: tuple[float, ...] | None = None
    blur_prob: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"model.low_res.size must be a positive integer (the low-res side); got "
                             f"{self.size!r}")
        if self.augment not in LOW_RES_AUGMENTS:
            raise ValueError(f"model.low_res.augment must be one of {list(LOW_RES_AUGMENTS)}; got "
                             f"{self.augment!r}")
        self.aug_max, self.aug_level = float(self.aug_max), float(self.aug_level)
        if not 0.0 < self.aug_max <= 1.0:
            raise ValueError(f"model.low_res.aug_max must lie in (0, 1] (a fraction of the schedule); got "
                             f"{self.aug_max}")
        if not 0.0 <= self.aug_level <= 1.0:
            raise ValueError(f"model.low_res.aug_level must lie in [0, 1] (a fraction of the schedule); got "
                             f"{self.aug_level}")
        if self.augment == "none":
            self.aug_level = 0.0
        if self.blur is not None:
            self.blur = tuple(float(b) for b in self.blur)
            if len(self.blur) != 2 or not 0.0 <= self.blur[0] <= self.blur[1]:
                raise ValueError(f"model.low_res.blur must be [lo, hi] with 0 <= lo <= hi (sigmas in low-res "
                                 f"pixels), or absent; got {list(self.blur)}")
        if not 0.0 <= self.blur_prob <= 1.0:
            raise ValueError(f"model.low_res.blur_prob must lie in [0, 1]; got {self.blur_prob}")

    def to_dict(self) -> dict[str, Any]:
        """As `DictConfig.to_dict`, without `blur` when there is none (TOML has no null)."""
        out = super().to_dict()
        if self.blur is None:
            del out["blur"]
        return out


@dataclass
class AutoencoderKLConfig(DictConfig):
    """Hyper-parameters of `AutoencoderKL`; JSON-able through `to_dict` / `from_dict`.

    Widths are `base_channels * channel_mult[i]` per level; every level but the last halves the image.
    `mid_attention` puts single-head self-attention between the two middle ResnetBlocks of the encoder and
    the decoder. `double_z` must stay True: a KL autoencoder's encoder emits a mean and a log-variance.
    `scaling_factor` (and an optional `shift_factor`) map raw latents to the unit-variance ones diffusion
    is trained on.
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32
    norm_eps: float = 1e-6
    mid_attention: bool = True
    double_z: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215
    shift_factor: float | None = None

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        for name in ("in_channels", "out_channels", "latent_channels", "base_channels", "num_res_blocks",
                     "norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AutoencoderKLConfig.{name} must be a positive integer; got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"AutoencoderKLConfig.channel_mult must be a non-empty list of positive ints; "
                             f"got {self.channel_mult}")
        widths = sorted({self.base_channels * m for m in self.channel_mult} | {self.base_channels})
        bad = [w for w in widths if w % self.norm_groups]
        if bad:
            raise ValueError(
                f"AutoencoderKLConfig.norm_groups={self.norm_groups} must divide every width "
                f"(base_channels * channel_mult = {widths}); {bad} are not multiples"
            )
        if not self.norm_eps > 0:
            raise ValueError(f"AutoencoderKLConfig.norm_eps must be positive; got {self.norm_eps}")
        if not self.double_z:
            raise ValueError("AutoencoderKLConfig.double_z=False gives an encoder without a variance, "
                             "which is not a KL autoencoder; keep double_z=True")
        self.scaling_factor = float(self.scaling_factor)
        if not self.scaling_factor > 0:
            raise ValueError(f"AutoencoderKLConfig.scaling_factor must be positive; got "
                             f"{self.scaling_factor} (1 / the std of the raw latents; 0.18215 for SD 1.x)")
        if self.shift_factor is not None:
            self.shift_factor = float(self.shift_factor)

    @property
    def downsampling_factor(self) -> int:
        """f = 2^(levels-1): image H and W must be multiples of it; latents are f times smaller."""
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def sd15(cls, **overrides: Any) -> AutoencoderKLConfig:
        """The Stable Diffusion 1.x autoencoder (kl-f8): 83,653,863 parameters, latents `[4, H/8, W/8]`."""
        return cls.from_dict({**cls().to_dict(), **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> AutoencoderKLConfig:
        """An f=8 model with the SD structure and 81,215 parameters, for CPU tests."""
        base = dict(base_channels=8, channel_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=4,
                    scaling_factor=1.0)
        return cls.from_dict({**cls().to_dict(), **base, **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> AutoencoderKLConfig:
        """An f=4 model (681,911 parameters) to train on CPU for 32x32 / 64x64 latent diffusion:
        `[3, 32, 32]` images become `[4, 8, 8]` latents. Narrow at full resolution (16 channels), where a
        CPU spends its time: it trained faster and to a higher PSNR than 32-64-64 channels."""
        base = dict(base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, norm_groups=8,
                    scaling_factor=1.0)
        return cls.from_dict({**cls().to_dict(), **base, **overrides})
