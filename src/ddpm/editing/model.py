"""One view of a text model for editing, whether a pixel model (`PixelPipeline` with a text encoder) or
Stable Diffusion 1.x (`StableDiffusion`, latents through its VAE): image <-> the diffusion space x0, text
-> the embedding e `[1, L, D]` the UNet's cross-attention reads, the diffusion loss at e, and sampling from
noise, from a noised image (SDEdit) or from an inverted x_T.

Notation: x0 `[B, C, h, w]` is the clean sample the UNet diffuses (pixels in [-1, 1], or SD's scaled VAE
latents, the posterior mode of the image); e, e_null the embeddings of a prompt and of "" (guidance).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import process
from ..objectives import training_loss
from ..pipelines import PixelPipeline, SamplingOptions
from ..pipelines.options import UNetPlacement
from ..pipelines.sd_images import ImageInput, image_size, image_tensor

__all__ = ["EditModel", "Sampling", "edit_model"]


@dataclass(frozen=True)
class Sampling:
    """How an edit is drawn: sampler, steps, grid, guidance scale, x0 clipping (pixel models), seed."""

    sampler: str
    steps: int
    spacing: str
    guidance_scale: float
    clip_x0: str | None
    seed: int
    steps_offset: int = 0
    final_sigma: str = "zero"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class EditModel(UNetPlacement):
    """A text model seen by the editing methods: `unet`, `schedule`, `prediction`, `kind` ("pixel"/"sd")."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        if isinstance(pipe, PixelPipeline):
            if pipe.condition != "text":
                raise ValueError(
                    f"this model is {pipe._kind}: editing from a text needs a text-conditional model (a ddpm "
                    "model trained with data.condition = 'text', e.g. configs/shapes_txt2img.toml, or an SD "
                    "1.x checkpoint)"
                )
            if pipe.cold is not None:
                raise ValueError("this is a cold-diffusion model; editing needs a Gaussian diffusion model")
            self.kind = "pixel"
            self.prediction = pipe.meta.diffusion.prediction
        else:
            self.kind = "sd"
            self.prediction = pipe.scheduler.prediction
        self.unet = pipe.unet
        self.schedule = pipe.schedule
        self.model_hash = str(getattr(pipe, "model_hash", "") or "")
        self.source = ""  # the path it was loaded from, when known (saved with an edit's state)

    def with_unet(self, unet: torch.nn.Module) -> EditModel:
        """The same model with another UNet (a fine-tuned copy); the pipeline is shared."""
        other = copy.copy(self)
        other.unet = unet
        return other

    # ------------------------------------------------------------------------------------------ images
    def image_size(self, image: ImageInput) -> tuple[int, int]:
        """(height, width) the model edits `image` at; a warning when `image` is resized to it."""
        h, w = image_size(image)
        if self.kind == "pixel":
            side = self.pipe.image_size
            size = (side, side)
            fix = f"this model was trained on {side}x{side} images"
        else:
            m = self.pipe.size_multiple
            size = (max(m, round(h / m) * m), max(m, round(w / m) * m))
            fix = f"SD needs sides that are multiples of {m}"
        if size != (h, w):
            warnings.warn(f"the image is {w}x{h}; {fix}, so it is resized to {size[1]}x{size[0]} (resize it "
                          "yourself to choose the crop)", stacklevel=3)  # fmt: skip
        return size

    def pixels(self, image: ImageInput) -> Tensor:
        """The image `[1, 3, H, W]` in [-1, 1] at the model's size (resized with a warning)."""
        return image_tensor(image, *self.image_size(image))

    @torch.no_grad()
    def to_x0(self, pixels: Tensor) -> Tensor:
        """Pixels `[B, 3, H, W]` -> x0: themselves, or SD's scaled latents of the VAE posterior's mode."""
        if self.kind == "pixel":
            return pixels.to(self.device, self.dtype)
        vae = self.pipe.vae
        posterior = vae.encode_posterior(pixels.to(self.device, self.pipe.vae_dtype))
        return vae.scale_latents(posterior.mode()).to(self.dtype)

    @torch.no_grad()
    def to_pixels(self, x0: Tensor) -> Tensor:
        """x0 -> pixels `[B, 3, H, W]` in [-1, 1] (float32, CPU)."""
        out = x0 if self.kind == "pixel" else self.pipe._decode(x0)
        return out.float().clamp(-1, 1).cpu()

    # -------------------------------------------------------------------------------------------- text
    @torch.no_grad()
    def embed(self, prompt: str) -> Tensor:
        """The UNet's context `[1, L, D]` for `prompt` (float32; "" is the unconditional embedding)."""
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
        if self.kind == "pixel":
            self.pipe.conditioner.check_prompts([prompt])  # warns about unknown words once
            return self.pipe.encode([prompt], warn=False).float()
        states, _, _ = self.pipe._encode(prompt, "", False, 0)
        return states.float()

    # ----------------------------------------------------------------------------------------- sampling
    def sampling(self, options: SamplingOptions | None = None) -> Sampling:
        """The model's defaults with `options` on top (eta and karras do not apply to edits)."""
        o = options or SamplingOptions()
        if self.kind == "pixel":
            r = self.pipe.resolve(o)
            clip = None if r.clip_x0 == "none" else r.clip_x0
            return Sampling(str(r.sampler), int(r.steps), str(r.spacing), float(r.guidance_scale), clip,
                            int(r.seed))  # fmt: skip
        r = self.pipe.resolve(o.replace(seed=0 if o.seed is None else o.seed))
        final = "sigma_min" if r.sampler in ("ddim", "plms") else "zero"
        return Sampling(str(r.sampler), int(r.steps), str(r.spacing), float(r.guidance_scale), None,
                        int(r.seed), self.pipe.scheduler.steps_offset, final)  # fmt: skip

    def ddim(self, s: Sampling) -> Sampling:
        """`s` as deterministic, unclipped DDIM on the same grid: what `invert` inverts and `sample` then runs
        from the inverted x_T (SD 1.x's DDIM ends at the level of t = 0, as its scheduler does)."""
        final = "sigma_min" if self.kind == "sd" else "zero"
        return Sampling("ddim", s.steps, s.spacing, s.guidance_scale, None, s.seed, s.steps_offset, final)

    def noise(self, shape: tuple[int, ...], seed: int, num: int = 1) -> Tensor:
        """`num` copies of the standard-normal x_T of `seed` (one image's noise shared by a strip)."""
        z = torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(seed)))
        return z.expand(num, *shape[1:]).to(self.device, self.dtype)

    @torch.no_grad()
    def sample(
        self,
        context: Tensor,
        null: Tensor,
        s: Sampling,
        *,
        start: Tensor,
        init: Tensor | None = None,
        strength: float = 1.0,
        progress: bool = False,
    ) -> Tensor:
        """x0 for each row of `context` `[B, L, D]` from `start` (x_T, or with `init` SDEdit's noise),
        guided against `null` `[1, L, D]`."""
        from .. import sample

        b = context.shape[0]
        guided = s.guidance_scale != 1.0
        return sample(
            self.unet, start, schedule=self.schedule, sampler=s.sampler, steps=s.steps, spacing=s.spacing,
            steps_offset=s.steps_offset, final_sigma=s.final_sigma,
            prediction=self.prediction, guidance_scale=s.guidance_scale,
            cond={"context": context.to(self.device, self.dtype)},
            uncond={"context": null.to(self.device, self.dtype).expand(b, -1, -1)} if guided else None,
            clip_x0=s.clip_x0, progress=progress, init=init, strength=strength,
            generator=[torch.Generator().manual_seed(s.seed) for _ in range(b)],
        )  # fmt: skip

    @torch.no_grad()
    def invert(self, x0: Tensor, context: Tensor, s: Sampling, *, progress: bool = False) -> Any:
        """`ddpm.invert` of x0 `[1, C, h, w]` under `context` (no guidance) on the grid of `self.ddim(s)`."""
        from .. import invert

        s = self.ddim(s)
        return invert(self.unet, x0, schedule=self.schedule, steps=s.steps, spacing=s.spacing,
                      steps_offset=s.steps_offset, final_sigma=s.final_sigma, prediction=self.prediction,
                      cond={"context": context.to(self.device, self.dtype)}, progress=progress)  # fmt: skip

    # ----------------------------------------------------------------------------------------- training
    def loss(self, x0: Tensor, context: Tensor, generator: torch.Generator, batch: int) -> Tensor:
        """L_simple (DDPM Eq. 14, in the model's prediction) of the one image x0 `[1, C, h, w]` at `context`
        `[1, L, D]`, averaged over `batch` draws of (t, eps) from `generator`; differentiable in both the
        context and the UNet's trainable weights."""
        T = self.schedule.num_timesteps
        t = torch.randint(0, T, (batch,), generator=generator)
        eps = torch.randn((batch, *x0.shape[1:]), generator=generator)
        dev = self.device
        x0b = x0.expand(batch, -1, -1, -1).float().to(dev)
        t, eps = t.to(dev), eps.to(dev)
        x_t = process.q_sample(self.schedule, x0b, t, eps)
        out = self.unet(x_t.to(self.dtype), t, context=context.expand(batch, -1, -1).to(self.dtype))
        c = x0.shape[1]
        loss = training_loss(out[:, :c].float(), x0=x0b, x_t=x_t, t=t, eps=eps, schedule=self.schedule,
                             prediction=self.prediction)  # fmt: skip
        return loss.mean()


def edit_model(model: str | Any, *, device: str = "auto", dtype: str = "auto") -> EditModel:
    """An `EditModel` from a loaded pipeline or a path: a ddpm text model (run folder or .safetensors) or
    an SD 1.x checkpoint (single file or diffusers folder), told apart by content."""
    if isinstance(model, EditModel):
        return model
    if not isinstance(model, (str, bytes)) and not hasattr(model, "__fspath__"):
        return EditModel(model)
    from pathlib import Path

    from ..io.checkpoint import detect_format, read_safetensors_header
    from ..io.keymaps import SINGLE_FILE

    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"no such model file or folder: {str(path)!r}")
    sd = (
        (path / "model_index.json").is_file()
        if path.is_dir()
        else detect_format(path) != "safetensors"
        or any(k.startswith(SINGLE_FILE.unet) for k in read_safetensors_header(path))
    )
    if sd:
        from ..pipelines.stable_diffusion import StableDiffusion

        out = EditModel(StableDiffusion.load(path, device=device, dtype=dtype))
    else:
        out = EditModel(PixelPipeline.load(path, device=device))
    out.source = str(path.resolve())
    return out
