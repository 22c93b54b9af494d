"""Stable Diffusion 1.x text-to-image, image-to-image and inpainting (Rombach et al. 2022, "LDM").

prompt -> CLIP token states `[B, 77 K, 768]` (`prompts.py`) -> `ddpm.sample` on latents `[B, 4, H/8, W/8]`
with classifier-free guidance -> VAE decode -> images `[B, 3, H, W]` in [-1, 1] + one metadata dict each.

Defaults travel with the model (`StableDiffusionModels.scheduler`): SD 1.x's scaled-linear betas,
`leading` spacing with steps_offset 1, epsilon prediction. DDIM and PLMS end at the level of t = 0
(SD 1.x's `set_alpha_to_one=False`), the other samplers at clean data, as diffusers runs them with
SD 1.x's scheduler configs, so the same settings give the same images as `StableDiffusionPipeline`.

Seeds (DESIGN.md): image i of a call uses `torch.Generator().manual_seed(seed + i)` on the CPU for, in
order, its VAE posterior draw (img2img; inpainting below strength 1 or by blending), its starting noise
`[4, h, w]`, the masked image's posterior draw (9-channel inpainting) and any sampler noise, so it is
the same alone or at any batch position.

Inpainting: a 9-channel UNet (SD inpainting checkpoints) gets `[latents, mask, masked-image latents]`,
as diffusers' StableDiffusionInpaintPipeline feeds it; an ordinary 4-channel UNet gets latent blending
(`sd_inpaint.py`): before every model call the kept region of x_t is replaced by the init latents noised
to that call's level with the run's own noise, and the result keeps the init latents there (the latent
mask is 1 wherever any pixel of the cell is repainted).
"""

from __future__ import annotations

import hashlib
import secrets
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config.choices import SD_DEFAULTS
from ..io.sd import StableDiffusionModels, load_stable_diffusion
from ..sampling.api import StepCallback
from .options import SEED_LIMIT, SamplingOptions, UNetPlacement, image_metadata, resolve_device
from .prompts import CHUNK_TOKENS, encode_prompts
from .sd_images import ImageInput, check_size, image_size, image_tensor, mask_tensor, round_size
from .sd_inpaint import blending_unet, inpainting_unet, latent_mask

__all__ = ["StableDiffusion", "SDResult", "generation_kwargs", "DEFAULT_FINAL_SIGMA", "resolve_dtype",
           "decode_latents"]

# Where each sampler's last step lands with SD 1.x's scheduler configs (set_alpha_to_one=False for
# DDIM/PNDM; final_sigmas_type="zero" for Euler and DPM-Solver).
DEFAULT_FINAL_SIGMA = {"ddim": "sigma_min", "plms": "sigma_min"}


class _Call(NamedTuple):
    """One call's own arguments (beside its `SamplingOptions`)."""

    mode: str
    prompt: str
    negative_prompt: str
    pixels: Tensor | None
    mask: Tensor | None
    strength: float
    latents: Tensor | None
    num_images: int
    batch_size: int | None
    progress: bool
    callback: StepCallback | None = None


class SDResult(NamedTuple):
    """Images `[N, 3, H, W]` in [-1, 1] (float32, CPU) and the metadata dict that reproduces each."""

    images: Tensor
    metadata: list[dict[str, Any]]


def generation_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `txt2img`/`img2img`/`inpaint` that regenerate the image `meta` describes."""
    keys = ("sampler", "steps", "spacing", "karras", "guidance_scale", "eta", "seed", "clip_skip")
    missing = [k for k in ("prompt", "negative_prompt", "height", "width", *keys) if k not in meta]
    if missing:
        raise ValueError(f"the metadata lacks {missing}; it was not written by this pipeline")
    if meta.get("latents_supplied"):
        raise ValueError(
            "this image started from latents passed by the caller, not from its seed; "
            "pass the same latents to regenerate it"
        )
    out = {k: meta[k] for k in ("prompt", "negative_prompt", "height", "width")}
    out["options"] = SamplingOptions(**{k: meta[k] for k in keys}, exponential=bool(meta.get("exponential")))
    if meta.get("mode") in ("img2img", "inpaint"):
        out["strength"] = meta["strength"]
    return out


class StableDiffusion(UNetPlacement):
    """A loaded SD 1.x model: `txt2img`, `img2img`, `inpaint`, each returning an `SDResult`."""

    def __init__(
        self,
        models: StableDiffusionModels,
        *,
        name: str = "",
        vae_tile: int | None = None,
        compile: bool = False,
    ) -> None:
        self.models = models
        self.unet, self.vae = models.unet, models.vae
        self.text_encoder, self.tokenizer = models.text_encoder, models.tokenizer
        self.scheduler = models.scheduler
        self.schedule = models.scheduler.schedule()
        self.name = name
        self.model_hash = models.model_hash
        self.vae_tile = vae_tile
        for module in (self.unet, self.vae, self.text_encoder):
            module.eval().requires_grad_(False)
        self._unet_call: Callable[..., Tensor] = torch.compile(self.unet) if compile else self.unet

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        vae_tile: int | None = None,
    ) -> StableDiffusion:
        """From a diffusers folder or an SD single file (`.safetensors`/`.ckpt`); `dtype="auto"` is float16
        on a GPU and float32 on the CPU; `channels_last` defaults to on for a GPU; `compile` wraps the UNet
        in `torch.compile`; `vae_tile` decodes in windows of that many latent cells (64 = 512 pixels; None:
        64 once a latent side passes 96; 0: never)."""
        dev = resolve_device(device)
        models = load_stable_diffusion(path, dtype=resolve_dtype(dtype, dev), device=dev)
        if channels_last if channels_last is not None else dev.type == "cuda":
            models.unet.to(memory_format=torch.channels_last)
            models.vae.to(memory_format=torch.channels_last)
        path = Path(path)
        return cls(
            models, name=path.stem if path.is_file() else path.name, vae_tile=vae_tile, compile=compile
        )

    # ---------------------------------------------------------------------------------------- properties
    @property
    def inpainting_model(self) -> bool:
        """Whether the UNet is SD's 9-channel inpainting UNet (latents 4, mask 1, masked-image latents 4)."""
        return self.unet.config.in_channels == 2 * self.vae.config.latent_channels + 1

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor times the UNet's (8 x 8 = 64 for SD 1.x)."""
        return self.vae.config.downsampling_factor * self.unet.config.downsampling_factor

    @property
    def default_size(self) -> int:
        """The side txt2img draws by default: the UNet's sample size times the VAE factor (512 for SD 1.x)."""
        return self.models.sample_size * self.vae.config.downsampling_factor

    # ---------------------------------------------------------------------------------------- public API
    def txt2img(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        options: SamplingOptions | None = None,
        height: int | None = None,
        width: int | None = None,
        latents: Tensor | None = None,
        num_images: int = 1,
        batch_size: int | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
    ) -> SDResult:
        """Images for `prompt` from noise: `latents` `[N, 4, H/8, W/8]` (standard normal) or the seed's;
        `height`/`width` default to `default_size`; `callback(step, steps, x0_hat)` after each sampler step
        of each batch (`ddpm.sample`; x0_hat are latents), raising from it stops the call."""
        side = self.default_size
        size = check_size(side if height is None else height, side if width is None else width,
                          self.size_multiple)
        call = _Call("txt2img", prompt, negative_prompt, None, None, 1.0, latents, num_images, batch_size,
                     progress, callback)
        return self._generate(call, self.resolve(options), size)

    def img2img(
        self,
        image: ImageInput,
        prompt: str,
        *,
        strength: float = SD_DEFAULTS["strength"]["img2img"],
        negative_prompt: str = "",
        options: SamplingOptions | None = None,
        height: int | None = None,
        width: int | None = None,
        latents: Tensor | None = None,
        num_images: int = 1,
        batch_size: int | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
    ) -> SDResult:
        """`image` re-drawn for `prompt` (SDEdit, Meng et al. 2022): its latents noised to the level
        int(steps * strength) steps before the end, then sampled; `latents` is that noise if given."""
        size = self._size_for(image, height, width)
        pixels = image_tensor(image, *size)
        call = _Call("img2img", prompt, negative_prompt, pixels, None, strength, latents, num_images,
                     batch_size, progress, callback)
        return self._generate(call, self.resolve(options), size)

    def inpaint(
        self,
        image: ImageInput,
        mask: ImageInput,
        prompt: str,
        *,
        strength: float = SD_DEFAULTS["strength"]["inpaint"],
        negative_prompt: str = "",
        options: SamplingOptions | None = None,
        height: int | None = None,
        width: int | None = None,
        latents: Tensor | None = None,
        num_images: int = 1,
        batch_size: int | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
    ) -> SDResult:
        """`image` with the white part of `mask` repainted for `prompt` (9-channel inpainting UNet, or latent
        blending for ordinary checkpoints); `strength` < 1 starts from the image's own latents there."""
        size = self._size_for(image, height, width)
        pixels, m = image_tensor(image, *size), mask_tensor(mask, *size)
        call = _Call("inpaint", prompt, negative_prompt, pixels, m, strength, latents, num_images, batch_size,
                     progress, callback)
        return self._generate(call, self.resolve(options), size)

    def resolve(self, options: SamplingOptions | None) -> SamplingOptions:
        """`options` with every unset field taken from SD 1.x's defaults (seed: a random one)."""
        o = options or SamplingOptions()
        if o.clip_x0 is not None:
            raise ValueError("clip_x0 applies to pixel models; Stable Diffusion samples latents unclipped")
        d = SD_DEFAULTS
        return o.replace(
            sampler=o.sampler or d["sampler"], steps=o.steps or d["steps"],
            spacing=o.spacing or self.scheduler.spacing,
            guidance_scale=float(d["guidance_scale"] if o.guidance_scale is None else o.guidance_scale),
            seed=secrets.randbelow(2**32) if o.seed is None else o.seed, clip_skip=o.clip_skip or 0,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------- internals
    def _size_for(self, image: ImageInput, height: int | None, width: int | None) -> tuple[int, int]:
        if height is None or width is None:
            h, w = image_size(image)
            if height is None and width is None:
                return round_size(h, w, self.size_multiple)
            # one side given: keep the aspect ratio
            if height is None:
                height = width * h / w  # type: ignore[operator]
            else:
                width = height * w / h
            return round_size(int(round(height)), int(round(width)), self.size_multiple)
        return check_size(height, width, self.size_multiple)

    def _check(self, call: _Call, o: SamplingOptions) -> tuple[int, int]:
        """(number of images, batch size) after checking the arguments of one call."""
        num, batch = call.num_images, call.batch_size
        if isinstance(num, bool) or int(num) != num or num < 1:
            raise ValueError(f"num_images must be a positive integer, got {num!r}")
        batch = num if batch is None else batch
        if isinstance(batch, bool) or int(batch) != batch or batch < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch!r}")
        if not isinstance(call.prompt, str) or not isinstance(call.negative_prompt, str):
            raise ValueError('prompt and negative_prompt must be strings (use "" for none)')
        if call.mode != "txt2img" and not 0.0 < call.strength <= 1.0:
            raise ValueError(
                f"strength must lie in (0, 1] (1 = ignore the image's content), got {call.strength}"
            )
        if not 0 <= int(o.clip_skip or 0) < self.text_encoder.config.layers:
            raise ValueError(f"clip_skip must lie in 0 … {self.text_encoder.config.layers - 1}")
        if int(o.seed or 0) > SEED_LIMIT - num:
            raise ValueError(f"seed must be an integer in 0 … 2^63 - 1 - num_images, got {o.seed!r}")
        c_lat = self.vae.config.latent_channels
        if call.mode == "inpaint" and not self.inpainting_model and self.unet.config.in_channels != c_lat:
            raise ValueError(
                f"this UNet takes {self.unet.config.in_channels} channels; inpainting needs a "
                f"{c_lat}- or {2 * c_lat + 1}-channel UNet"
            )
        if call.mode != "inpaint" and self.inpainting_model:
            raise ValueError("this is an inpainting checkpoint (9-channel UNet); use inpaint() with a mask")
        return int(num), int(batch)

    def _generate(self, call: _Call, o: SamplingOptions, size: tuple[int, int]) -> SDResult:
        num, batch = self._check(call, o)
        height, width = size
        f = self.vae.config.downsampling_factor
        shape = (self.vae.config.latent_channels, height // f, width // f)
        latents = call.latents
        if latents is not None and (not isinstance(latents, Tensor) or tuple(latents.shape) != (num, *shape)):
            got = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise ValueError(
                f"latents must be a tensor [num_images={num}, {', '.join(map(str, shape))}] "
                f"for a {width}x{height} image; got {got}"
            )
        final_sigma = DEFAULT_FINAL_SIGMA.get(str(o.sampler), "zero")
        guided = float(o.guidance_scale or 0) != 1.0
        cond, uncond, chunks = self._encode(call.prompt, call.negative_prompt, guided, int(o.clip_skip or 0))
        images = []
        for start in range(0, num, batch):
            stop = min(num, start + batch)
            gens = [torch.Generator().manual_seed(int(o.seed or 0) + i) for i in range(start, stop)]
            part = None if latents is None else latents[start:stop]
            x = self._sample_batch(call, o, gens, shape, part, cond, uncond, final_sigma)
            images.append(self._decode(x).float().clamp(-1, 1).cpu())
        return SDResult(torch.cat(images), self._metadata(call, o, size, num, final_sigma, chunks))

    def _metadata(
        self, call: _Call, o: SamplingOptions, size: tuple[int, int], num: int, final_sigma: str, chunks: Any
    ) -> list[dict[str, Any]]:
        base: dict[str, Any] = dict(
            mode=call.mode, prompt=call.prompt, negative_prompt=call.negative_prompt,
            steps_offset=self.scheduler.steps_offset, final_sigma=final_sigma, width=size[1], height=size[0],
            clip_skip=o.clip_skip, prediction=self.scheduler.prediction, model_hash=self.model_hash,
            model=self.name, latents_supplied=call.latents is not None,
        )  # fmt: skip
        if chunks[0].num_chunks > 1 or chunks[1].num_chunks > 1:
            base["prompt_note"] = (
                f"prompt of {chunks[0].num_tokens} tokens and negative prompt of {chunks[1].num_tokens} "
                f"encoded as {max(chunks[0].num_chunks, chunks[1].num_chunks)} chunks of {CHUNK_TOKENS} "
                "tokens (not truncated)"
            )
        if call.pixels is not None:
            base["strength"] = float(call.strength)
            base["init_image_sha256"] = hashlib.sha256(call.pixels.numpy().tobytes()).hexdigest()[:16]
        if call.mask is not None:
            base["inpainting"] = "9-channel UNet" if self.inpainting_model else "latent blending"
        return image_metadata(o, num, **base)

    def _encode(
        self, prompt: str, negative: str, guided: bool, clip_skip: int
    ) -> tuple[Tensor, Tensor | None, list[Any]]:
        """Prompt and negative-prompt states `[1, 77 K, D]` with the same K (chunks padded alike)."""
        states, chunks = encode_prompts(
            self.text_encoder, self.tokenizer, [prompt, negative], clip_skip=clip_skip
        )
        states = states.to(self.dtype)
        return states[:1], (states[1:] if guided else None), chunks

    def _sample_batch(
        self,
        call: _Call,
        o: SamplingOptions,
        gens: list[torch.Generator],
        shape: tuple[int, ...],
        latents: Tensor | None,
        cond: Tensor,
        uncond: Tensor | None,
        final_sigma: str,
    ) -> Tensor:
        from .. import sample

        mode, pixels, mask, strength = call.mode, call.pixels, call.mask, call.strength
        sampler, steps, spacing = str(o.sampler), int(o.steps or 0), str(o.spacing)
        b, dev, dtype = len(gens), self.device, self.dtype
        # generator order per image, as diffusers' pipelines draw: init-latent sample (img2img; inpainting
        # below strength 1 or by blending), starting noise, masked-image latent sample (9-channel UNet)
        init = None
        nine = mode == "inpaint" and self.inpainting_model
        if pixels is not None and not (nine and strength >= 1.0):
            init = self._encode_image(pixels.expand(b, -1, -1, -1), gens).to(dtype)
        if latents is None:
            noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
        else:
            noise = latents.detach().float().cpu()
        noise = noise.to(dev, dtype)
        extra: dict[str, Tensor] = {}
        model: Callable[..., Tensor] = self._unet_call
        if mode == "inpaint":
            assert pixels is not None and mask is not None
            m_lat = latent_mask(mask, shape[1:]).to(dev, dtype).expand(b, -1, -1, -1)
            if nine:
                kept = (pixels * (mask < 0.5)).expand(b, -1, -1, -1)
                masked = self._encode_image(kept, gens).to(dtype)
                m_in = F.interpolate(mask, size=shape[1:], mode="nearest")  # as SD's inpainting training
                m_in = m_in.to(dev, dtype).expand(b, -1, -1, -1)
                extra["inpaint"] = torch.cat([m_in, masked], dim=1)
                model = inpainting_unet(self._unet_call)
            else:
                assert init is not None
                extra["blend"] = torch.cat([init, noise, m_lat], dim=1)
                model = blending_unet(
                    self._unet_call, self.schedule, sampler=sampler, steps=steps, spacing=spacing,
                    steps_offset=self.scheduler.steps_offset, karras=o.karras,
                    exponential=o.exponential, final_sigma=final_sigma,
                )  # fmt: skip
        # inpainting at strength 1 starts from pure noise; img2img always from the noised init
        start = None if mode == "inpaint" and strength >= 1.0 else init
        c = {"context": cond.expand(b, -1, -1), **extra}
        u = None if uncond is None else {"context": uncond.expand(b, -1, -1), **extra}
        x0 = sample(
            model, noise, schedule=self.schedule, sampler=sampler, steps=steps, spacing=spacing,
            steps_offset=self.scheduler.steps_offset, final_sigma=final_sigma,
            prediction=self.scheduler.prediction, eta=float(o.eta), karras=o.karras,
            exponential=o.exponential,
            guidance_scale=float(o.guidance_scale or 0), cond=c, uncond=u, generator=gens,
            progress=call.progress, callback=call.callback, init=start,
            strength=strength if start is not None else 1.0,
        )  # fmt: skip
        if mode == "inpaint" and not self.inpainting_model:
            assert init is not None
            x0 = torch.lerp(init.to(x0.dtype), x0, m_lat.to(x0.dtype))
        return x0

    def _encode_image(self, pixels: Tensor, gens: list[torch.Generator]) -> Tensor:
        """Images `[B, 3, H, W]` -> scaled latents drawn from q(z|x), row i with generator i (LDM §3)."""
        posterior = self.vae.encode_posterior(pixels.to(self.device, self.vae_dtype))
        return self.vae.scale_latents(posterior.sample(generator=gens))

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _decode(self, latents: Tensor) -> Tensor:
        return decode_latents(self.vae, latents, self.vae_tile)


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype:
    """"auto" -> float16 on a GPU, float32 on the CPU; a name (float32, fp16, bf16 …) -> its torch dtype."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)} or 'auto'")
        return _DTYPES[dtype]
    return dtype


def decode_latents(vae: Any, latents: Tensor, vae_tile: int | None) -> Tensor:
    """Latents -> images with `vae`, in windows of `vae_tile` latent cells (None: 64 once a side passes 96;
    0: never); an fp16/bf16 VAE that gives NaN/inf runs again in float32 (no black image)."""
    tile = vae_tile
    if tile is None:  # auto: windows of 512 pixels (SD) once a side passes 768
        tile = 64 if max(latents.shape[-2:]) > 96 else None
    elif tile == 0:
        tile = None
    vae_dtype = next(vae.parameters()).dtype
    out = vae.decode(latents.to(vae_dtype), tile=tile)
    if vae_dtype != torch.float32 and not bool(torch.isfinite(out).all()):
        warnings.warn(
            f"the {vae_dtype} VAE decoded NaN/inf values; decoding again in float32",
            RuntimeWarning,
            stacklevel=5,
        )
        vae.float()
        try:
            out = vae.decode(latents.float(), tile=tile)
        finally:
            vae.to(vae_dtype)
    return out
