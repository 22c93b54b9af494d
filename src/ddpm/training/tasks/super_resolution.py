"""Super-resolution as a training task: run.task = "diffusion" with `[model] low_res` set (Ho et al. 2022,
Cascaded Diffusion Models; Saharia et al. 2022, Imagen, Sec. 2.5).

The UNet denoises the high-res image x0 given its low-res version x_lo = downsample(x0, s), corrupted by
noise-conditioning augmentation: a step draws, beside the diffusion task's t, eps, guidance-drop and flip
masks, one augmentation level a ~ U[0, aug_max] per sample (0 for `augment = "none"`), its noise
eps_lo `[B, C, s, s]`, and, with `blur`, a blur sigma per sample (0 with probability 1 - blur_prob). The
network sees z = sqrt(ab(a)) blur(x_lo) + sqrt(1 - ab(a)) eps_lo on the model's own schedule and the
level a (`ddpm.conditioning.low_res`). Class and text conditions, their dropout for classifier-free
guidance, the loss, the model-file layout, EMA, resume and export are the diffusion task's; the low-res
settings travel in the UNet config of the model file (`unet.low_res`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...conditioning.low_res import augment, blur, downsample
from ...io.images import make_grid, save_png
from ...models.unet import UNet
from .base import Autocast
from .diffusion import DiffusionModule, DiffusionTask

__all__ = ["SuperResolutionTask", "SuperResolutionModule"]


class SuperResolutionModule(DiffusionModule):
    """`unet(x_t, t, low_res=z, aug_level=a, **conditioner(batch, drop))`; the keys of `DiffusionModule`."""

    def forward(self, x_t: Tensor, t: Tensor, batch: dict[str, Any], drop: Tensor | None) -> Tensor:
        return self.unet(x_t, t, low_res=batch["low_res"], aug_level=batch["aug_level"],
                         **self.conditioner(batch, drop))


class SuperResolutionTask(DiffusionTask):
    """A UNet (and its conditioner) trained to denoise x0 given its augmented low-res version."""

    def prepare(self) -> None:
        super().prepare()
        self.low_res = lr = self.unet_config.low_res_config
        size = self.dataset.image_size
        if lr.size >= size:
            raise ValueError(
                f"model.low_res.size = {lr.size} must be smaller than the images it is upscaled to "
                f"({size}x{size}, data.image_size); e.g. low_res.size = {size // 2}"
            )

    def build(self) -> tuple[Any, nn.Module]:
        ds, module = super().build()
        return ds, SuperResolutionModule(module.unet, module.conditioner)

    def draws(self, generator: torch.Generator, *, parts: int) -> dict[str, Tensor | None]:
        out = super().draws(generator, parts=parts)
        g, n, lr = generator, self.config.train.batch_size, self.low_res
        c = self.shape[0]
        if lr.augment == "gaussian":
            out["aug"] = torch.rand(n, generator=g, dtype=torch.float64).float() * lr.aug_max
        else:
            out["aug"] = torch.zeros(n)
        out["aug_eps"] = torch.randn(n, c, lr.size, lr.size, generator=g)
        if lr.blur is not None:
            lo, hi = lr.blur
            sigma = lo + (hi - lo) * torch.rand(n, generator=g)
            out["blur"] = torch.where(torch.rand(n, generator=g) < lr.blur_prob, sigma, torch.zeros(n))
        else:
            out["blur"] = None
        return out

    def low_res_input(self, x0: Tensor, draws: dict[str, Any], rows: slice) -> tuple[Tensor, Tensor]:
        """(z `[B, C, s, s]`, a `[B]`): the augmented low-res input of rows `rows` of the global batch."""
        low = downsample(x0, self.low_res.size)
        if draws["blur"] is not None:
            low = blur(low, draws["blur"][rows])
        level = draws["aug"][rows]
        return augment(low, level, draws["aug_eps"][rows], self.schedule), level.to(x0.device)

    def model_inputs(
        self, batch: dict[str, Any], x0: Tensor, draws: dict[str, Any], rows: slice
    ) -> dict[str, Any]:
        z, level = self.low_res_input(x0, draws, rows)
        return {**batch, "low_res": z, "aug_level": level}

    @torch.no_grad()
    def preview(
        self, module: nn.Module, path: Path, *, step: int, device: torch.device, autocast: Autocast
    ) -> Path:
        """Pairs of rows: the bilinear upsampling of training images' low-res versions, then the model's
        upscaling of them at the default aug level (image i from a generator seeded train.seed + i)."""
        from ... import sample
        from ...conditioning.low_res import upsample

        sc, seed, lr = self.config.sample, self.config.train.seed, self.low_res
        n, cond, uncond, nrow = module.conditioner.preview(sc.num, device=device)
        x0 = torch.stack([self.dataset[i % len(self.dataset)]["image"] for i in range(n)]).float()
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        noise = torch.stack([torch.randn(*self.shape, generator=g) for g in gens]).to(device)
        aug_eps = torch.stack([torch.randn(self.shape[0], lr.size, lr.size, generator=g) for g in gens])
        level = torch.full((n,), lr.aug_level)
        low = downsample(x0, lr.size)
        z = augment(low, level, aug_eps, self.schedule).to(device)
        extra = {"low_res": z, "aug_level": level.to(device)}
        cond, uncond = {**(cond or {}), **extra}, ({**uncond, **extra} if uncond is not None else None)
        guided = uncond is not None and sc.guidance_scale != 1.0
        unet: UNet = module.unet
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
            out = sample(
                unet, noise, schedule=self.schedule, sampler=sc.sampler,
                steps=min(sc.steps, self.schedule.num_timesteps), prediction=self.config.diffusion.prediction,
                guidance_scale=sc.guidance_scale if guided else 1.0, cond=cond,
                uncond=uncond if guided else None, clip_x0="dynamic", generator=gens,
            )
        up = upsample(low, self.shape[1:])
        grid = make_grid(torch.cat([up, out.float().clamp(-1, 1).cpu()]), nrow=nrow)
        info = {"step": step, "sampler": sc.sampler, "steps": sc.steps, "guidance_scale": sc.guidance_scale,
                "seed": seed, "aug_level": lr.aug_level}
        return save_png(path, grid, {"ddpm": json.dumps(info, sort_keys=True)})
