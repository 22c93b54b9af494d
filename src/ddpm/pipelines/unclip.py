"""unCLIP text-to-image (DALL·E 2, Ramesh et al. 2022): a prior maps a caption to an image embedding of the
frozen contrastive encoder, and the decoder (a `PixelPipeline` of a `clip_image` model) draws an image
from that embedding.

`UnclipPrior.embed` samples the prior with `ddpm.sample` over the embedding as a `[N, E, 1, 1]` tensor,
prediction "x0", no clipping; embedding i starts from the noise of a generator seeded `seed + i`.
Classifier-free guidance drops the caption (tokens masked, text embedding zero), as the prior was trained.
The sampled embedding is renormalised to the encoder's sphere (norm sqrt(E), the scale the decoder was
trained on) before decoding. Both files record the encoder they were trained on (path and content hash):
`Unclip` refuses a decoder and a prior of different encoders.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io.clip_files import load_frozen_encoder, model_file_of
from ..io.model_file import file_hash, load_model_file
from ..io.model_meta import ModelMeta
from ..models.prior import DiffusionPrior, PriorConfig
from ..schedules import from_config
from ..training.tasks.unclip import text_condition
from .options import SamplingOptions, resolve_device
from .pixel import PixelPipeline, load_part

__all__ = ["UnclipPrior", "Unclip"]


class UnclipPrior:
    """A loaded prior: `prior` (`DiffusionPrior`), the frozen `encoder` and its tokenizer, `schedule`,
    `meta`."""

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu") -> None:
        file = model_file_of(path)
        tensors, raw = load_model_file(file)
        meta = ModelMeta.from_dict(raw, source=str(file))
        if meta.kind != "prior":
            raise ValueError(f"{file} is a {meta.kind} model, not an unCLIP prior (train one with [run] "
                             'task = "unclip_prior", configs/shapes_unclip_prior.toml)')
        self.meta, self.file, self.device = meta, file, resolve_device(device)
        section = meta.prior or {}
        self.source = dict(section.get("encoder") or {})
        self.prior = DiffusionPrior(PriorConfig.from_dict(section["model"]))
        load_part(self.prior, tensors, "prior.", file, "prior")
        self.prior.to(self.device).eval().requires_grad_(False)
        self.encoder, self.tokenizer = load_frozen_encoder(self.source, f"the unCLIP prior {file}")
        self.encoder.to(self.device)
        self.schedule = from_config(meta.diffusion.schedule)
        self.dim = int(self.prior.config.embed_dim)

    @torch.no_grad()
    def embed(
        self, prompts: list[str], *, seed: int = 0, steps: int | None = None, sampler: str | None = None,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """Scaled image embeddings `[N, E]` (norm sqrt(E)) sampled for `prompts`, embedding i from
        seed + i."""
        from .. import sample

        d = self.meta.sampling
        n = len(prompts)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        noise = torch.stack([torch.randn(self.dim, 1, 1, generator=g) for g in gens]).to(self.device)
        self.tokenizer(list(prompts), warn=True)  # unknown words and truncation warn once
        cond = text_condition(self.encoder, self.tokenizer, prompts, device=self.device)
        g = d.guidance_scale if guidance_scale is None else float(guidance_scale)
        uncond = None
        if g != 1.0:
            uncond = text_condition(self.encoder, self.tokenizer, prompts, device=self.device,
                                    drop=torch.ones(n, dtype=torch.bool))
        z = sample(self.prior, noise, schedule=self.schedule, sampler=sampler or d.sampler,
                   steps=min(steps or d.steps, self.schedule.num_timesteps), prediction="x0",
                   guidance_scale=g, cond=cond, uncond=uncond, generator=gens)
        z = z.flatten(1).float().cpu()
        return torch.nn.functional.normalize(z, dim=1) * math.sqrt(self.dim)


class Unclip:
    """Prior -> decoder: `txt2img(prompt, num)` draws embeddings from the prior and decodes them."""

    def __init__(self, prior: UnclipPrior, decoder: PixelPipeline) -> None:
        if decoder.condition != "clip_image":
            raise ValueError(f"the decoder {decoder.name} is {decoder._kind}, not an unCLIP decoder (train "
                             'one with data.condition = "clip_image", configs/shapes_unclip_decoder.toml)')
        theirs = (decoder.meta.conditioning.image_encoder or {}).get("hash")
        if theirs and prior.source.get("hash") and theirs != prior.source["hash"]:
            raise ValueError(f"the prior {prior.file} and the decoder {decoder.name} were trained on "
                             f"different image encoders (hashes {prior.source['hash']} and {theirs}); use a "
                             "matching pair")
        self.prior, self.decoder = prior, decoder

    @classmethod
    def load(cls, prior: str | Path, decoder: str | Path, *, device: str | torch.device = "cpu") -> Unclip:
        return cls(UnclipPrior(prior, device=device), PixelPipeline.load(decoder, device=device))

    @torch.no_grad()
    def txt2img(
        self, prompt: str | list[str], num: int, *, options: SamplingOptions | None = None,
        prior_steps: int | None = None, prior_guidance: float | None = None, batch_size: int = 64,
        progress: bool = False,
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        """`num` images for `prompt` (one, or one per image); image i's embedding and pixels from seed + i."""
        prompts = [prompt] * num if isinstance(prompt, str) else list(prompt)
        if len(prompts) != num:
            raise ValueError(f"got {len(prompts)} prompts for {num} images; give one for all, or one "
                             "per image")
        seed = int((options.seed if options is not None else None) or 0)
        z = self.prior.embed(prompts, seed=seed, steps=prior_steps, guidance_scale=prior_guidance)
        images, metas = self.decoder.generate(num, image_embeds=z, options=options, batch_size=batch_size,
                                              progress=progress)
        g = self.prior.meta.sampling.guidance_scale if prior_guidance is None else prior_guidance
        for m, p in zip(metas, prompts):
            m.update(prompt=p, unclip={"prior": self.prior.file.name,
                                       "prior_hash": file_hash(self.prior.file),
                                       "prior_steps": prior_steps or self.prior.meta.sampling.steps,
                                       "prior_guidance": float(g)})
        return images, metas
