"""Cold diffusion as a training task (Bansal et al. 2022, Eq. 2): run.task = "diffusion" with
`[diffusion] degradation` set. The UNet becomes a restoration network R(x_t, t) ~ x0 for a deterministic
degradation D (`ddpm.degradations`).

A step draws, for the whole global batch, the levels t ~ U{1..T}, one seed per image for the
degradation's random parts (Gaussian noise, random mask centres; only where it has some), and the
diffusion task's guidance-drop and flip masks; a micro-batch is degraded to x_t = D(x0, t) and
R(x_t, t) scored against x0 by `objectives.restoration_loss` (the paper's L1 by default). Everything
else, the UNet, conditioner, model-file layout, resume checks, EMA, DDP and export, is the diffusion
task's. The model file's diffusion section adds the degradation and the generation start
(`ddpm.degradations.ChannelMeans`, fitted on the training images).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...degradations import ChannelMeans, check_degradation, degradation_config, make_degradation, start
from ...io.images import make_grid, save_png
from ...io.model_meta import DiffusionMeta, ModelMeta
from ...objectives import restoration_loss
from .base import Autocast
from .diffusion import DiffusionTask

__all__ = ["ColdDiffusionTask", "degradation_of", "PRIOR_IMAGES"]

PRIOR_IMAGES = 4096  # the channel-means prior is fitted on at most this many training images


def degradation_of(diffusion: Any) -> Any:
    """The degradation a `[diffusion]` section describes ("gaussian" takes the section's schedule)."""
    options = dict(diffusion.degradation_options)
    if diffusion.degradation == "gaussian" and "schedule" not in options:
        options["schedule"] = diffusion.schedule_config()
    return make_degradation(diffusion.degradation, **options)


class ColdDiffusionTask(DiffusionTask):
    """A UNet (and its conditioner) trained to restore D(x0, t) to x0."""

    def prepare(self) -> None:
        super().prepare()
        self.degradation = degradation_of(self.config.diffusion)
        n = min(len(self.dataset), PRIOR_IMAGES)
        images = torch.stack([self.dataset[i]["image"] for i in range(n)]).float()
        check_degradation(self.degradation, like=images[:2])
        self.degradation(images[:2], self.degradation.levels)  # size errors now, not at the first step
        self.prior = ChannelMeans.fit(images, noise=self.config.diffusion.start_noise)
        self.random_parts = hasattr(self.degradation, "bind")

    def draws(self, generator: torch.Generator, *, parts: int) -> dict[str, Tensor | None]:
        g, n = generator, self.config.train.batch_size
        return {
            "t": torch.randint(1, self.degradation.levels + 1, (n,), generator=g),
            "seed": torch.randint(0, 2**62, (n,), generator=g) if self.random_parts else None,
            "drop": torch.rand(n, generator=g) < self.drop_prob if self.drop_prob > 0 else None,
            "flip": torch.rand(n, generator=g) < 0.5 if self.config.data.flip else None,
        }

    def _bound(self, like: Tensor, seeds: Tensor | None) -> Any:
        """The degradation with image i's random parts drawn from its own seed (micro-batch invariant)."""
        if seeds is None:
            return self.degradation
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return self.degradation.bind(like, generator=gens)

    def loss(
        self, forward: Callable[..., Any], batch: dict[str, Any], draws: dict[str, Any], *, rows: slice,
        part: int, autocast: Autocast,
    ) -> Tensor:
        x0 = batch["image"]
        dev = x0.device
        if draws["flip"] is not None:
            x0 = torch.where(draws["flip"][rows].to(dev).view(-1, 1, 1, 1), x0.flip(-1), x0)
        t = draws["t"][rows].to(dev, non_blocking=True)
        seeds = draws["seed"][rows] if draws["seed"] is not None else None
        x_t = self._bound(x0, seeds)(x0, t)  # x_t = D(x0, t)
        drop = draws["drop"][rows] if draws["drop"] is not None else None
        with autocast():
            out = forward(x_t, t, batch, drop)  # R(x_t, t)
        return restoration_loss(out, x0, kind=self.config.diffusion.restoration_loss).mean()

    def meta(self, *, step: int) -> ModelMeta:
        meta = super().meta(step=step)
        process = DiffusionMeta(schedule=meta.diffusion.schedule, prediction="x0", learned_variance=False,
                                degradation=degradation_config(self.degradation), start=self.prior.to_dict())
        return meta.with_sections(diffusion=process)

    @torch.no_grad()
    def preview(
        self, module: nn.Module, path: Path, *, step: int, device: torch.device, autocast: Autocast
    ) -> Path:
        """A grid generated from the channel-means start (image i from a generator seeded train.seed + i)."""
        from ... import sample

        sc, seed = self.config.sample, self.config.train.seed
        n, cond, uncond, nrow = module.conditioner.preview(sc.num, device=device)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        bound, x_T = start(self.degradation, self.prior, (n, *self.shape), generator=gens, device=device)
        guided = uncond is not None and sc.guidance_scale != 1.0
        steps = None if sc.sampler == "cold_direct" else min(sc.steps, self.degradation.levels)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
            x0 = sample(
                module.unet, x_T, degradation=bound, sampler=sc.sampler, steps=steps,
                guidance_scale=sc.guidance_scale if guided else 1.0, cond=cond,
                uncond=uncond if guided else None, clip_x0="static", generator=gens,
            )  # fmt: skip
        grid = make_grid(x0.float().clamp(-1, 1).cpu(), nrow=nrow)
        info = {"step": step, "sampler": sc.sampler, "steps": sc.steps, "seed": seed,
                "degradation": degradation_config(self.degradation)}  # fmt: skip
        return save_png(path, grid, {"ddpm": json.dumps(info, sort_keys=True)})
