"""unCLIP on a frozen contrastive model (DALL·E 2, Ramesh et al. 2022): the decoder's conditioner and the
prior's task.

Decoder: a diffusion run with `data.condition = "clip_image"` and `[unclip] encoder = PATH` (a model file
or run folder of run.task = "contrastive"). This module registers the conditioner factory, which loads the
frozen encoder (`ddpm.conditioning.clip_image`); the loop and `DiffusionTask` are unchanged.

Prior (run.task = "unclip_prior"): `DiffusionPrior` learns p(z_i | y) over the frozen encoder's scaled image
embeddings z_i = sqrt(E) * encode_image(x) of captioned images, given the caption's token states and
embedding, with L_simple on x0 (prediction = "x0", as DALL·E 2) under the configured schedule:

| symbol | code                  | meaning                                                                 |
| ------ | --------------------- | ----------------------------------------------------------------------- |
| z_0    | `z0`                  | `[B, E, 1, 1]` the target image embedding                                |
| z_t    | `q_sample(z_0, t, e)` | the noised embedding                                                     |
| drop   | `draws["drop"]`       | `[B]` captions dropped (tokens masked, text embedding zero) with         |
|        |                       | probability data.cond_drop_prob, for classifier-free guidance            |

Its model file holds the prior under "prior." with the metadata's "prior" section (the `PriorConfig`, the
encoder's path and hash, the embedding scale), a "diffusion" section (schedule, prediction) and
training.task = "unclip_prior"; `ddpm.pipelines.unclip` samples it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...conditioning import register_conditioner
from ...conditioning.clip_image import ClipImageConditioner, embed_scale
from ...config import Config
from ...io.clip_files import load_contrastive_file
from ...io.images import make_grid, save_png
from ...io.model_file import file_hash
from ...io.model_meta import DataMeta, DiffusionMeta, ModelMeta, SamplingMeta, TrainingMeta
from ...io.run_folder import run_model_file
from ...models.contrastive import ContrastiveModel
from ...models.prior import DiffusionPrior, PriorConfig
from ...objectives import sample_timesteps, training_loss
from ...process import q_sample
from ...schedules import from_config
from ...text.word_tokenizer import WordTokenizer
from .base import Autocast, Task, file_meta

__all__ = ["UnclipPriorTask", "load_encoder", "text_condition"]

_PREVIEW = 8


def load_encoder(path: str | None, what: str) -> tuple[ContrastiveModel, WordTokenizer, dict[str, Any]]:
    """The frozen contrastive model at `path`, its tokenizer and {"path", "hash"} for the metadata."""
    if not path:
        raise ValueError(f"{what} needs a frozen contrastive model: set [unclip] encoder = PATH (a model "
                         'file or run folder trained with run.task = "contrastive", e.g. '
                         "configs/shapes_clip.toml)")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"unclip.encoder = {path!r}: no such file or run folder (train one with "
                                "`ddpm train --config configs/shapes_clip.toml`)")
    file = run_model_file(p) if p.is_dir() else p
    model, tokenizer, _ = load_contrastive_file(file)
    return model.requires_grad_(False), tokenizer, {"path": str(p.resolve()), "hash": file_hash(file)}


@torch.no_grad()
def text_condition(
    encoder: ContrastiveModel, tokenizer: WordTokenizer, captions: list[str], *, device: torch.device,
    drop: Tensor | None = None,
) -> dict[str, Tensor]:
    """The prior's caption inputs: token states, mask and scaled text embedding; dropped rows masked/zero."""
    tok = tokenizer(list(captions), warn=False)
    ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
    enc = encoder.to(device)
    states = enc.text(ids, mask)
    emb = enc.encode_text(ids, mask) * embed_scale(enc.config.embed_dim)
    keep = mask.bool()
    if drop is not None:
        d = drop.to(device)
        keep = keep & ~d[:, None]
        emb = torch.where(d[:, None], torch.zeros_like(emb), emb)
        states = torch.where(d[:, None, None], torch.zeros_like(states), states)
    return {"text_tokens": states.float(), "text_mask": keep, "text_embed": emb.float()}


def _clip_image_factory(config: Config, dataset: Any) -> ClipImageConditioner:
    encoder, _, source = load_encoder(config.unclip.encoder, "data.condition = 'clip_image'")
    size = encoder.config.vision_config.image_size
    if dataset.image_size != size or dataset.channels != 3:
        raise ValueError(f"the image encoder {config.unclip.encoder} reads RGB {size}x{size} images; the "
                         f"data are {dataset.channels}-channel {dataset.image_size}x{dataset.image_size} "
                         f"(set data.image_size = {size})")
    cond = ClipImageConditioner(encoder, source)
    cond.preview_images = torch.stack([dataset[i]["image"] for i in range(min(4, len(dataset)))]).float()
    return cond


register_conditioner("clip_image", _clip_image_factory)


class PriorModule(nn.Module):
    """The trained network: `prior(z_t, t, **text)`; one module for DDP and the EMA."""

    def __init__(self, prior: DiffusionPrior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, x: Tensor, t: Tensor, **text: Tensor) -> Tensor:
        return self.prior(x, t, **text)


class UnclipPriorTask(Task):
    """`DiffusionPrior` from [unclip], trained to denoise the frozen encoder's image embeddings."""

    name = "unclip_prior"
    fixed_on_resume = ("unclip.", "diffusion.", "data.dataset", "data.image_size", "data.options",
                       "train.seed")

    def prepare(self) -> None:
        from ...data import load_dataset

        cfg, dc, uc = self.config, self.config.data, self.config.unclip
        if cfg.diffusion.prediction != "x0" or cfg.diffusion.learned_variance:
            raise ValueError("run.task = 'unclip_prior' predicts the clean embedding (DALL·E 2): set "
                             "diffusion.prediction = \"x0\" and leave diffusion.learned_variance off")
        self.encoder, self.tokenizer, self.source = load_encoder(uc.encoder, "run.task = 'unclip_prior'")
        size = self.encoder.config.vision_config.image_size
        self.dataset = load_dataset(dc.dataset, split="train", image_size=size, channels=3, flip=False,
                                    seed=cfg.train.seed, **dc.options)
        captions = getattr(self.dataset, "captions", None)
        if not captions or any(c is None for c in captions):
            raise ValueError(f"run.task = 'unclip_prior' needs a caption for every image; {dc.dataset!r} "
                             "lacks some (add .txt caption sidecars, or use the 'shapes' dataset)")
        e = self.encoder.config
        self.prior_config = PriorConfig(embed_dim=e.embed_dim, text_width=e.text_config.width,
                                        context_length=self.tokenizer.context_length, width=uc.width,
                                        layers=uc.layers, heads=uc.heads, mlp_ratio=uc.mlp_ratio)

    def build(self) -> tuple[Any, nn.Module]:
        cfg = self.config
        self.schedule = from_config(cfg.diffusion.schedule_config())
        self.dim = self.prior_config.embed_dim
        torch.manual_seed(cfg.train.seed)
        return self.dataset, PriorModule(DiffusionPrior(self.prior_config))

    # ------------------------------------------------------------------------------------ one step
    def draws(self, generator: torch.Generator, *, parts: int) -> dict[str, Tensor | None]:
        g, n, d = generator, self.config.train.batch_size, self.config.diffusion
        p = self.config.data.cond_drop_prob
        return {
            "t": sample_timesteps(n, self.schedule.num_timesteps, generator=g,
                                  distribution=d.timestep_sampling, loc=d.timestep_loc,
                                  scale=d.timestep_scale),
            "eps": torch.randn(n, self.dim, 1, 1, generator=g),
            "drop": torch.rand(n, generator=g) < p if p > 0 else None,
        }

    def targets(self, images: Tensor) -> Tensor:
        """z_0 `[B, E, 1, 1]`: the scaled image embeddings of `images`."""
        with torch.no_grad():
            z = self.encoder.to(images.device).encode_image(images.float()) * embed_scale(self.dim)
        return z[:, :, None, None]

    def loss(
        self, forward: Callable[..., Any], batch: dict[str, Any], draws: dict[str, Any], *, rows: slice,
        part: int, autocast: Autocast,
    ) -> Tensor:
        dev = batch["image"].device
        z0 = self.targets(batch["image"])
        t = draws["t"][rows]
        eps = draws["eps"][rows].to(dev)
        drop = draws["drop"][rows] if draws["drop"] is not None else None
        text = text_condition(self.encoder, self.tokenizer, list(batch["caption"]), device=dev, drop=drop)
        z_t = q_sample(self.schedule, z0, t, eps)
        with autocast():
            out = forward(z_t, t.to(dev), **text)
        return training_loss(out, x0=z0, x_t=z_t, t=t, eps=eps, schedule=self.schedule, prediction="x0",
                             min_snr_gamma=self.config.diffusion.min_snr_gamma).mean()

    # ----------------------------------------------------------------------------------- outputs
    def meta(self, *, step: int) -> ModelMeta:
        cfg, sc = self.config, self.config.sample
        sections = {
            "diffusion": DiffusionMeta(schedule=self.schedule.to_config(), prediction="x0",
                                       learned_variance=False),
            "data": DataMeta(dataset=str(cfg.data.dataset), image_size=int(self.dataset.image_size),
                             channels=3,
                             options=dict(cfg.data.options)),
            "sampling": SamplingMeta(sampler=sc.sampler, steps=int(sc.steps),
                                     guidance_scale=float(sc.guidance_scale), clip_x0=None),
            "training": TrainingMeta(step=int(step), run=cfg.run.name, task="unclip_prior"),
        }
        fields = {"data": ("dataset", "image_size", "channels", "options"),
                  "training": ("step", "run", "task")}
        model = {"prior": {"model": self.prior_config.to_dict(), "encoder": dict(self.source),
                           "embed_scale": embed_scale(self.dim)}}
        return file_meta(model, sections, fields=fields)

    def check_checkpoint(self, meta: dict[str, Any], *, run_dir: Path) -> None:
        old = ((meta.get("prior") or {}).get("encoder") or {}).get("hash")
        if old is not None and old != self.source["hash"]:
            raise ValueError(f"cannot resume {run_dir}: its image encoder changed since the run started "
                             f"(hash {old} -> {self.source['hash']}); restore unclip.encoder, or start "
                             "a new run")

    @torch.no_grad()
    def preview(
        self, module: nn.Module, path: Path, *, step: int, device: torch.device, autocast: Autocast
    ) -> Path:
        """The first training images in a grid; the JSON gives the cosine similarity of the prior's sampled
        embedding (from its caption) to the image's own embedding, for each."""
        from ... import sample

        n, sc, seed = min(_PREVIEW, len(self.dataset)), self.config.sample, self.config.train.seed
        images = torch.stack([self.dataset[i]["image"] for i in range(n)]).float().to(device)
        captions = [self.dataset.captions[i] for i in range(n)]
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        noise = torch.stack([torch.randn(self.dim, 1, 1, generator=g) for g in gens]).to(device)
        cond = text_condition(self.encoder, self.tokenizer, captions, device=device)
        uncond = text_condition(self.encoder, self.tokenizer, captions, device=device,
                                drop=torch.ones(n, dtype=torch.bool))
        guided = sc.guidance_scale != 1.0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
            z = sample(module.prior, noise, schedule=self.schedule, sampler=sc.sampler,
                       steps=min(sc.steps, self.schedule.num_timesteps), prediction="x0",
                       guidance_scale=sc.guidance_scale if guided else 1.0, cond=cond,
                       uncond=uncond if guided else None, generator=gens)
        cos = torch.nn.functional.cosine_similarity(z.flatten(1).float(), self.targets(images).flatten(1),
                                                    dim=1)
        info = {"step": step, "task": "unclip_prior", "captions": captions,
                "cosine_to_image_embedding": [round(float(c), 4) for c in cos]}
        return save_png(path, make_grid(images.cpu(), nrow=n), {"ddpm": json.dumps(info)})
