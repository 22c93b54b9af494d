"""The diffusion task (run.task = "diffusion"): a UNet and its conditioner learn to denoise (DDPM Alg. 1).

A step draws, for the whole global batch, t ~ U{0..T-1} (or logit-normal), eps ~ N(0, I), the
classifier-free-guidance drop mask and the flip mask; a micro-batch is noised to x_t = q_sample(x0, t, eps)
and scored by `objectives.training_loss`. Model files hold the UNet under "unet." and the conditioner's
weights under its export prefix ("text_encoder." for text), with the diffusion, data, conditioning,
sampling and training sections of the metadata (ARCHITECTURE.md, "Files").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...conditioning import Conditioner, make_conditioner
from ...config import Config
from ...io.images import make_grid, save_png
from ...io.keymaps import MODEL_FILE
from ...io.model_meta import ConditioningMeta, DataMeta, DiffusionMeta, ModelMeta, SamplingMeta, TrainingMeta
from ...models.unet import UNet, UNetConfig
from ...objectives import sample_timesteps, training_loss
from ...process import q_sample
from ...schedules import from_config
from .base import Autocast, Task, file_meta

__all__ = ["DiffusionTask", "DiffusionModule", "resolve_unet_config"]

_MODULE_CONDITIONER_PREFIX = "conditioner."


class DiffusionModule(nn.Module):
    """The trained network: `unet(x_t, t, **conditioner(batch, drop))`; one module for DDP and the EMA."""

    def __init__(self, unet: UNet, conditioner: Conditioner):
        super().__init__()
        self.unet = unet
        self.conditioner = conditioner

    def forward(self, x_t: Tensor, t: Tensor, batch: dict[str, Any], drop: Tensor | None) -> Tensor:
        return self.unet(x_t, t, **self.conditioner(batch, drop))


def resolve_unet_config(config: Config, dataset: Any, conditioner: Conditioner) -> UNetConfig:
    """`config.model` with the fields the data and diffusion settings imply filled in (channels, classes,
    learned variance, conditioner fields); a value set to something else is an error naming both."""
    implied: dict[str, tuple[Any, str]] = {
        "in_channels": (dataset.channels, f"the dataset's {dataset.channels} channel(s)"),
        "out_channels": (dataset.channels, f"the dataset's {dataset.channels} channel(s)"),
        "learned_variance": (config.diffusion.learned_variance, "diffusion.learned_variance"),
        "num_classes": (None, f"data.condition = {config.data.condition!r}"),
        "context_dim": (None, f"data.condition = {config.data.condition!r}"),
        "image_embed_dim": (None, f"data.condition = {config.data.condition!r}"),
    }
    for k, v in conditioner.unet_fields().items():
        implied[k] = (v, f"data.condition = {config.data.condition!r}")
    defaults = UNetConfig()
    given = config.model.to_dict()
    for key, (value, reason) in implied.items():
        if given[key] != getattr(defaults, key) and given[key] != value:
            raise ValueError(
                f"model.{key} = {given[key]!r} conflicts with {value!r} implied by {reason}; "
                f"remove model.{key} from the config (training fills it in)"
            )
    unet_config = UNetConfig.from_dict({**given, **{k: v for k, (v, _) in implied.items()}})
    f = unet_config.downsampling_factor
    if dataset.image_size % f:
        raise ValueError(
            f"images of {dataset.image_size}x{dataset.image_size} do not fit a UNet with "
            f"{len(unet_config.channel_mult)} levels and patch size {unet_config.patch_size} (sizes must be "
            f"multiples of {f}); change data.image_size, model.channel_mult or model.patch_size"
        )
    return unet_config


def _vocab(meta: dict[str, Any]) -> list[str] | None:
    tokenizer = ((meta.get("conditioning") or {}).get("text_encoder") or {}).get("tokenizer") or {}
    return tokenizer.get("vocab")


class DiffusionTask(Task):
    """A UNet (and its conditioner) trained with `training_loss` under the configured diffusion process."""

    name = "diffusion"
    fixed_on_resume = ("model.", "diffusion.", "data.dataset", "data.image_size", "data.channels",
                       "data.condition", "train.seed", "text.")

    def prepare(self) -> None:
        from ...data import load_dataset

        cfg, dc = self.config, self.config.data
        self.dataset = load_dataset(dc.dataset, split="train", image_size=dc.image_size, channels=dc.channels,
                                    flip=False, seed=cfg.train.seed, **dc.options)
        self.conditioner = make_conditioner(cfg, self.dataset)
        self.unet_config = cfg.model = resolve_unet_config(cfg, self.dataset, self.conditioner)

    def build(self) -> tuple[Any, nn.Module]:
        cfg, ds = self.config, self.dataset
        self.schedule = from_config(cfg.diffusion.schedule_config())
        self.shape = (ds.channels, ds.image_size, ds.image_size)
        self.drop_prob = cfg.data.cond_drop_prob if self.conditioner.kind != "none" else 0.0
        torch.manual_seed(cfg.train.seed)
        return ds, DiffusionModule(UNet(self.unet_config), self.conditioner)

    # ------------------------------------------------------------------------------------ one step
    def draws(self, generator: torch.Generator, *, parts: int) -> dict[str, Tensor | None]:
        g, n, d = generator, self.config.train.batch_size, self.config.diffusion
        return {
            "t": sample_timesteps(
                n, self.schedule.num_timesteps, generator=g, distribution=d.timestep_sampling,
                loc=d.timestep_loc, scale=d.timestep_scale,
            ),
            "eps": torch.randn(n, *self.shape, generator=g),
            "drop": torch.rand(n, generator=g) < self.drop_prob if self.drop_prob > 0 else None,
            "flip": torch.rand(n, generator=g) < 0.5 if self.config.data.flip else None,
        }

    def model_inputs(
        self, batch: dict[str, Any], x0: Tensor, draws: dict[str, Any], rows: slice
    ) -> dict[str, Any]:
        """What the module is given beside x_t and t for rows `rows` (x0 flipped as trained): the batch,
        or for a subclass the batch and its own inputs (a super-resolution model's low-res image)."""
        return batch

    def loss(
        self, forward: Callable[..., Any], batch: dict[str, Any], draws: dict[str, Any], *, rows: slice,
        part: int, autocast: Autocast,
    ) -> Tensor:
        diff, x0 = self.config.diffusion, batch["image"]
        dev = x0.device
        if draws["flip"] is not None:
            x0 = torch.where(draws["flip"][rows].to(dev).view(-1, 1, 1, 1), x0.flip(-1), x0)
        inputs = self.model_inputs(batch, x0, draws, rows)
        t = draws["t"][rows]  # stays on the CPU: schedule coefficients are gathered there
        eps = draws["eps"][rows].to(dev, non_blocking=True)
        x_t = q_sample(self.schedule, x0, t, eps)
        drop = draws["drop"][rows] if draws["drop"] is not None else None
        with autocast():
            out = forward(x_t, t.to(dev, non_blocking=True), inputs, drop)
        return training_loss(
            out, x0=x0, x_t=x_t, t=t, eps=eps, schedule=self.schedule, prediction=diff.prediction,
            learned_variance=diff.learned_variance, min_snr_gamma=diff.min_snr_gamma,
            vlb_weight=diff.vlb_weight,
        ).mean()

    # ----------------------------------------------------------------------------------- files
    def to_file(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """"unet.…" stays, "conditioner.…" becomes the conditioner's export prefix."""
        prefix, ours = self.conditioner.export_prefix, _MODULE_CONDITIONER_PREFIX
        return {prefix + k[len(ours):] if k.startswith(ours) else k: v for k, v in state.items()}

    def from_file(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        prefix, ours = self.conditioner.export_prefix, _MODULE_CONDITIONER_PREFIX
        theirs = lambda k: k.startswith(prefix) and not k.startswith(MODEL_FILE.unet)  # noqa: E731
        return {ours + k[len(prefix):] if theirs(k) else k: v for k, v in tensors.items()}

    def meta(self, *, step: int) -> ModelMeta:
        cfg, ds, sc = self.config, self.dataset, self.config.sample
        class_names = list(ds.class_names) if getattr(ds, "class_names", None) else None
        dc, diff = cfg.data, cfg.diffusion
        sections = {
            "diffusion": DiffusionMeta(schedule=self.schedule.to_config(), prediction=diff.prediction,
                                       learned_variance=bool(diff.learned_variance)),
            "data": DataMeta(dataset=str(dc.dataset), image_size=int(ds.image_size),
                             channels=int(ds.channels), class_names=class_names, options=dict(dc.options)),
            "conditioning": ConditioningMeta(**self.conditioner.meta()),
            "sampling": SamplingMeta(sampler=sc.sampler, steps=int(sc.steps),
                                     guidance_scale=float(sc.guidance_scale), clip_x0="static"),
            "training": TrainingMeta(step=int(step), run=cfg.run.name),
        }
        fields = {"data": ("dataset", "image_size", "channels", "class_names", "options"),
                  "training": ("step", "run"), "conditioning": tuple(self.conditioner.meta())}
        return file_meta({"unet": self.unet_config.to_dict()}, sections, fields=fields)

    def check_checkpoint(self, meta: dict[str, Any], *, run_dir: Path) -> None:
        """A text run's vocabulary comes from its captions: refuse to resume where they changed since."""
        old, new = _vocab(meta), _vocab({"conditioning": self.conditioner.meta()})
        if old is not None and new is not None and list(old) != list(new):
            gained, lost = sorted(set(new) - set(old)), sorted(set(old) - set(new))
            raise ValueError(
                f"cannot resume {run_dir}: its captions changed since the run started, so the text "
                f"vocabulary did too (new words: {', '.join(gained[:10]) or 'none'}; gone: "
                f"{', '.join(lost[:10]) or 'none'}); restore the captions, or start a new run"
            )

    # ----------------------------------------------------------------------------------- preview
    @torch.no_grad()
    def preview(
        self, module: nn.Module, path: Path, *, step: int, device: torch.device, autocast: Autocast
    ) -> Path:
        """A grid sampled from `module` (class-conditional: one row per class). Image i starts from the
        noise of a generator seeded train.seed + i, so every grid of a run shows the same starts."""
        from ... import sample

        sc, seed = self.config.sample, self.config.train.seed
        n, cond, uncond, nrow = module.conditioner.preview(sc.num, device=device)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        noise = torch.stack([torch.randn(*self.shape, generator=g) for g in gens]).to(device)
        guided = uncond is not None and sc.guidance_scale != 1.0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
            x0 = sample(
                module.unet, noise, schedule=self.schedule, sampler=sc.sampler,
                steps=min(sc.steps, self.schedule.num_timesteps), prediction=self.config.diffusion.prediction,
                guidance_scale=sc.guidance_scale if guided else 1.0, cond=cond,
                uncond=uncond if guided else None, clip_x0="static", generator=gens,
            )
        grid = make_grid(x0.float().clamp(-1, 1).cpu(), nrow=nrow)
        info = {"step": step, "sampler": sc.sampler, "steps": sc.steps, "guidance_scale": sc.guidance_scale,
                "seed": seed}
        return save_png(path, grid, {"ddpm": json.dumps(info, sort_keys=True)})
