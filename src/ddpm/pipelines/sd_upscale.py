"""The Stable Diffusion x4 upscaler: a text-guided latent diffusion model that samples latents at the low-res
image's size, conditioned on that image, and decodes them 4x larger (Rombach et al. 2022, §4.4; the
`stabilityai/stable-diffusion-x4-upscaler` release).

| symbol | code          | meaning                                                                 |
| ------ | ------------- | ----------------------------------------------------------------------- |
| y      | `low`         | the low-res image `[B, 3, h, w]` in [-1, 1]                              |
| s      | `noise_level` | the level y is noised to by the low-res schedule, 0 … max_noise_level    |
| y_s    | `low_noisy`   | sqrt(ab_s) y + sqrt(1 - ab_s) n (DDPM Eq. 4 on the low-res schedule)     |
| z_t    | `x`           | latents `[B, 4, h, w]`: the UNet sees `[z_t, y_s]` (7 channels)           |
| E(s)   | `label_emb`   | the noise level's embedding, added to the timestep embedding              |

This is the noise-conditioning augmentation of cascaded models (Ho et al. 2022, "Cascaded Diffusion
Models", §4.1; Saharia et al. 2022, "Imagen"): trained on low-res inputs noised to random levels and told
the level, the model tolerates artefacts of the stage below when sampled at a small fixed level.

Seeds, in the order diffusers' StableDiffusionUpscalePipeline draws them from
`generator=torch.Generator().manual_seed(seed)`: image i of a call uses `torch.Generator().manual_seed(seed
+ i)` for the low-res noise n `[3, h, w]`, then the starting latents `[4, h, w]`, then any sampler noise, so
it is the same alone or in a batch.
Sampling is `ddpm.sample` with the scheduler the model came with (DDIM with v-prediction in the release),
classifier-free guidance batching [negative, prompt] as diffusers does, the low-res image and its level in
both halves.

Memory: the UNet runs at the input's size and the VAE decodes 4x larger (in windows past 96 latent cells);
an input above `max_input_pixels` (default 512 x 512 -> 2048 x 2048 out) is refused with the size and
the option that raises the limit.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import process
from ..io.sd_upscale import UpscalerModels, load_sd_upscaler
from .options import SEED_LIMIT, SamplingOptions, UNetPlacement, image_metadata, resolve_device
from .prompts import encode_prompts
from .sd_images import ImageInput, image_size, image_tensor, round_size
from .stable_diffusion import SDResult, decode_latents, resolve_dtype

__all__ = ["StableDiffusionUpscale", "UPSCALE_DEFAULTS", "DEFAULT_MAX_INPUT_PIXELS"]

# diffusers' StableDiffusionUpscalePipeline defaults, except steps (20, as the model card's examples run it)
UPSCALE_DEFAULTS = {"noise_level": 20, "guidance_scale": 9.0, "steps": 20}
DEFAULT_MAX_INPUT_PIXELS = 512 * 512  # a 2048 x 2048 output: about what a 24 GB GPU decodes in fp16


class StableDiffusionUpscale(UNetPlacement):
    """A loaded SD x4 upscaler: `upscale(image, prompt=…)` -> an `SDResult` of 4x larger images."""

    def __init__(self, models: UpscalerModels, *, name: str = "", vae_tile: int | None = None,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> None:
        self.models = models
        self.unet, self.vae = models.unet, models.vae
        self.text_encoder, self.tokenizer = models.text_encoder, models.tokenizer
        self.scheduler = models.scheduler
        self.schedule = models.scheduler.schedule()
        self.low_res_schedule = models.low_res.schedule()
        self.name = name
        self.model_hash = models.model_hash
        self.vae_tile = vae_tile
        self.max_input_pixels = max_input_pixels
        for module in (self.unet, self.vae, self.text_encoder):
            module.eval().requires_grad_(False)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str = "auto",
        vae_tile: int | None = None,
        max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
    ) -> StableDiffusionUpscale:
        """From a `stable-diffusion-x4-upscaler` diffusers folder or the release's single file;
        `dtype="auto"` is float16 on a GPU and float32 on the CPU; `vae_tile` as `StableDiffusion.load`'s
        (in latent cells = 4 output pixels)."""
        dev = resolve_device(device)
        models = load_sd_upscaler(path, dtype=resolve_dtype(dtype, dev), device=dev)
        return cls(models, name=Path(path).name, vae_tile=vae_tile, max_input_pixels=max_input_pixels)

    # ---------------------------------------------------------------------------------------- properties
    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (the UNet's downsampling factor: 8 for the release)."""
        return self.unet.config.downsampling_factor

    @property
    def scale(self) -> int:
        """How much larger the output is than the input: the VAE's factor (4)."""
        return self.vae.config.downsampling_factor

    @property
    def final_sigma(self) -> str:
        """Where DDIM / PLMS end: at clean data with set_alpha_to_one, else at the level of t = 0."""
        if self.scheduler.sampler in ("ddim", "plms") and not self.models.final_alpha_one:
            return "sigma_min"
        return "zero"

    # ---------------------------------------------------------------------------------------- public API
    def upscale(
        self,
        image: ImageInput,
        *,
        prompt: str = "",
        negative_prompt: str = "",
        noise_level: int = UPSCALE_DEFAULTS["noise_level"],
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        options: SamplingOptions | None = None,
        num_images: int = 1,
        progress: bool = False,
    ) -> SDResult:
        """`image` (path, PIL image, uint8 array or `[(1,) 3, h, w]` tensor in [-1, 1]) 4x larger, guided by
        `prompt`; `noise_level` (0 … max_noise_level, 350 for the release) is how much the input is noised
        first: higher tolerates more artefacts and invents more detail. `steps`, `guidance_scale` and `seed`
        override `options`' fields; the rest of `options` (sampler, eta, spacing) as for StableDiffusion."""
        o = self.resolve((options or SamplingOptions()).replace(
            **{k: v for k, v in (("steps", steps), ("guidance_scale", guidance_scale), ("seed", seed))
               if v is not None}))
        num = self._check(prompt, negative_prompt, noise_level, num_images, o)
        low = self._input(image)
        guided = float(o.guidance_scale or 0) != 1.0
        states, chunks = encode_prompts(self.text_encoder, self.tokenizer, [prompt, negative_prompt],
                                        clip_skip=int(o.clip_skip or 0))
        states = states.to(self.dtype)
        cond, uncond = states[:1], (states[1:] if guided else None)
        images = []
        for i in range(num):
            gen = torch.Generator().manual_seed(int(o.seed or 0) + i)
            x = self._sample(low, noise_level, o, gen, cond, uncond, progress)
            images.append(decode_latents(self.vae, x, self.vae_tile).float().clamp(-1, 1).cpu())
        h, w = low.shape[-2:]
        meta = image_metadata(
            o, num, mode="upscale", prompt=prompt, negative_prompt=negative_prompt,
            noise_level=int(noise_level),
            width=w * self.scale, height=h * self.scale, input_width=w, input_height=h,
            init_image_sha256=hashlib.sha256(low.numpy().tobytes()).hexdigest()[:16],
            prediction=self.scheduler.prediction, steps_offset=self.scheduler.steps_offset,
            final_sigma=self.final_sigma, clip_skip=o.clip_skip, model=self.name, model_hash=self.model_hash,
            prompt_chunks=max(chunks[0].num_chunks, chunks[1].num_chunks),
        )  # fmt: skip
        return SDResult(torch.cat(images), meta)

    def resolve(self, options: SamplingOptions | None) -> SamplingOptions:
        """`options` with every unset field taken from the model's scheduler and UPSCALE_DEFAULTS."""
        o = options or SamplingOptions()
        if o.clip_x0 is not None:
            raise ValueError("clip_x0 applies to pixel models; the upscaler samples latents unclipped")
        d = UPSCALE_DEFAULTS
        return o.replace(
            sampler=o.sampler or self.scheduler.sampler, steps=o.steps or d["steps"],
            spacing=o.spacing or self.scheduler.spacing,
            guidance_scale=float(d["guidance_scale"] if o.guidance_scale is None else o.guidance_scale),
            seed=secrets.randbelow(2**32) if o.seed is None else o.seed, clip_skip=o.clip_skip or 0,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------- internals
    def _check(self, prompt: Any, negative: Any, noise_level: Any, num: Any, o: SamplingOptions) -> int:
        if not isinstance(prompt, str) or not isinstance(negative, str):
            raise ValueError('prompt and negative_prompt must be strings (use "" for none)')
        top = self.models.max_noise_level
        if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level <= top:
            raise ValueError(f"noise_level must be an integer in 0 … {top} (how far the low-res image is "
                             f"noised before upscaling; 20 is the usual value), got {noise_level!r}")
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num_images must be a positive integer, got {num!r}")
        if not 0 <= int(o.clip_skip or 0) < self.text_encoder.config.layers:
            raise ValueError(f"clip_skip must lie in 0 … {self.text_encoder.config.layers - 1}")
        if int(o.seed or 0) > SEED_LIMIT - num:
            raise ValueError(f"seed must be an integer in 0 … 2^63 - 1 - num_images, got {o.seed!r}")
        return num

    def _input(self, image: ImageInput) -> Tensor:
        """The low-res image `[1, 3, h, w]` in [-1, 1], its sides rounded to the UNet's multiple (with a
        warning); an input above max_input_pixels is refused before any work."""
        h, w = image_size(image)
        limit = self.max_input_pixels
        if h * w > limit:
            raise ValueError(
                f"the input is {w}x{h} = {w * h} pixels, above this upscaler's limit of {limit} "
                f"(max_input_pixels; the output would be {w * self.scale}x{h * self.scale}); shrink or crop "
                "the input, or raise max_input_pixels (--max-input-pixels) if the device has the memory"
            )
        size = round_size(h, w, self.size_multiple, what="input image")
        if isinstance(image, Tensor) and image.ndim in (3, 4) and tuple(image.shape[-3:]) == (3, *size) \
                and (image.ndim == 3 or image.shape[0] == 1) and image.is_floating_point():
            x = image.detach().float().cpu().reshape(1, 3, *size)
            if not bool(torch.isfinite(x).all()) or float(x.min()) < -1 or float(x.max()) > 1:
                raise ValueError("an image tensor must hold finite values in [-1, 1]")
            return x.contiguous()
        return image_tensor(image, *size)

    def _model(self) -> Callable[..., Tensor]:
        """The UNet on `[z_t, y_s]` with the noise level as its class; the condition dict carries y_s and
        the level, so classifier-free guidance batches them with the text states."""
        unet = self.unet

        def model(x: Tensor, t: Tensor, *, context: Tensor, low_res: Tensor, noise_level: Tensor) -> Tensor:
            return unet(torch.cat([x, low_res.to(x.dtype)], dim=1), t, class_labels=noise_level,
                        context=context)

        return model

    def _sample(
        self, low: Tensor, noise_level: int, o: SamplingOptions, gen: torch.Generator, cond: Tensor,
        uncond: Tensor | None, progress: bool,
    ) -> Tensor:
        from .. import sample

        dev, dtype = self.device, self.dtype
        h, w = low.shape[-2:]
        # generator order, as diffusers draws: the low-res noise, then the starting latents
        n = torch.randn(low.shape, generator=gen)
        level = torch.tensor([noise_level], dtype=torch.long)
        low_noisy = process.q_sample(self.low_res_schedule, low.double(), level, n.double()).float()
        x_T = torch.randn((1, self.vae.config.latent_channels, h, w), generator=gen).to(dev, dtype)
        extra = {"low_res": low_noisy.to(dev, dtype), "noise_level": level.to(dev)}
        c = {"context": cond, **extra}
        u = None if uncond is None else {"context": uncond, **extra}
        return sample(
            self._model(), x_T, schedule=self.schedule, sampler=str(o.sampler), steps=int(o.steps or 0),
            spacing=str(o.spacing), steps_offset=self.scheduler.steps_offset, final_sigma=self.final_sigma,
            prediction=self.scheduler.prediction, eta=float(o.eta), karras=o.karras,
            guidance_scale=float(o.guidance_scale or 0), cond=c, uncond=u, generator=[gen], progress=progress,
        )  # fmt: skip
