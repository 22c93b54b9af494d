"""The text-to-image pipeline: a text-conditional model (run folder or model file) -> images for prompts.

The text encoder is rebuilt from the model file's "conditioning.text_encoder" entry (vocabulary and config
travel there) and its weights come from the "text_encoder." keys. Prompts are encoded once per call; the
empty prompt "" is the unconditional embedding the model learnt through caption dropout, and a negative
prompt takes its place in classifier-free guidance (Ho & Salimans 2022). Image i of a call uses its own CPU
generator seeded `seed + i` (DESIGN.md, "Seeds"), so it comes out the same alone or in any batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..conditioning.text import TextConditioner, text_conditioner_from_meta
from ..models.unet import UNet
from ..schedules import DiscreteSchedule
from .pixel import load_part, open_model

__all__ = ["TextToImagePipeline"]

TEXT_PREFIX = "text_encoder."


def _per_image(value: str | Sequence[str] | None, num: int, name: str) -> list[str]:
    if value is None:
        return [""] * num
    if isinstance(value, str):
        return [value] * num
    values = list(value)
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name} must be a string or a list of strings")
    if len(values) != num:
        raise ValueError(f"got {len(values)} {name}s for {num} images; give one for all, or one per image")
    return values


class TextToImagePipeline:
    """A loaded text-to-image pixel model: `unet`, `conditioner` (tokenizer + encoder), `schedule`, `meta`."""

    def __init__(
        self,
        unet: UNet,
        conditioner: TextConditioner,
        schedule: DiscreteSchedule,
        meta: dict[str, Any],
        *,
        device: torch.device,
        model_hash: str = "",
        name: str = "",
    ):
        self.unet = unet
        self.conditioner = conditioner
        self.schedule = schedule
        self.meta = meta
        self.device = device
        self.model_hash = model_hash
        self.name = name

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "auto") -> TextToImagePipeline:
        """From a run folder (its latest checkpoint's EMA weights) or a model `.safetensors` file."""
        m = open_model(
            path, device=device, kinds=("text",),
            wrong_kind="not a text-to-image one; sample it with `ddpm sample`",
        )  # fmt: skip
        conditioner = text_conditioner_from_meta((m.meta.get("conditioning") or {}).get("text_encoder"))
        load_part(conditioner, m.tensors, TEXT_PREFIX, m.file, "text encoder")
        conditioner.to(m.device).eval().requires_grad_(False)
        return cls(
            m.unet, conditioner, m.schedule, m.meta, device=m.device, model_hash=m.model_hash, name=m.name
        )

    @property
    def image_size(self) -> int:
        return int((self.meta.get("data") or {}).get("image_size") or 32)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], *, warn: bool = True) -> Tensor:
        """Text-encoder states `[B, L, D]` of `prompts` (the UNet's cross-attention context)."""
        return self.conditioner.encode_prompts(list(prompts), device=self.device, warn=warn)

    @torch.no_grad()
    def generate(
        self,
        num: int,
        *,
        prompts: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float = 0.0,
        batch_size: int = 64,
        progress: bool = False,
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        """`num` images `[N, 3, H, W]` in [-1, 1] (CPU, float32) and one metadata dict per image.

        `prompts` / `negative_prompt`: one string for all images or one per image (None: the empty prompt).
        Image i uses `torch.Generator().manual_seed(seed + i)`. Unset sampling options take the model
        file's defaults; guidance 1 samples the conditional model alone.
        """
        from .. import sample

        if int(num) != num or num < 1:
            raise ValueError(f"num must be a positive integer, got {num!r}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        texts = _per_image(prompts, num, "prompt")
        negatives = _per_image(negative_prompt, num, "negative prompt")
        defaults = self.meta.get("sampling") or {}
        guidance_scale = float(
            defaults.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale
        )
        sampler = sampler or defaults.get("sampler", "dpmpp_2m")
        steps = int(steps or defaults.get("steps", 20))
        clip_x0 = defaults.get("clip_x0", "static")
        prediction = self.meta["diffusion"].get("prediction", "eps")
        size = self.image_size
        c = int(self.unet.config.in_channels)
        guided = guidance_scale != 1.0
        # Tokenise everything once up front, so truncation / unknown-word warnings come once per call.
        self.conditioner.check_prompts(sorted(set(texts) | (set(negatives) if guided else set())))

        images = []
        for start in range(0, num, batch_size):
            stop = min(num, start + batch_size)
            gens = [torch.Generator().manual_seed(seed + i) for i in range(start, stop)]
            noise = torch.stack([torch.randn(c, size, size, generator=g) for g in gens]).to(self.device)
            cond = {"context": self.encode(texts[start:stop], warn=False)}
            uncond = {"context": self.encode(negatives[start:stop], warn=False)} if guided else None
            x0 = sample(
                self.unet,
                noise,
                schedule=self.schedule,
                sampler=sampler,
                steps=steps,
                prediction=prediction,
                eta=eta,
                guidance_scale=guidance_scale,
                cond=cond,
                uncond=uncond,
                clip_x0=clip_x0,
                generator=gens,
                progress=progress,
            )
            images.append(x0.float().clamp(-1, 1).cpu())

        metadata = [
            {
                "prompt": texts[i],
                "negative_prompt": negatives[i],
                "seed": seed + i,
                "sampler": sampler,
                "steps": steps,
                "spacing": "trailing",
                "karras": False,
                "eta": eta,
                "guidance_scale": guidance_scale,
                "clip_x0": clip_x0,
                "prediction": prediction,
                "width": size,
                "height": size,
                "model_hash": self.model_hash,
                "model": self.name,
            }
            for i in range(num)
        ]
        return torch.cat(images), metadata
