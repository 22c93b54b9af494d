"""Cascaded generation (Ho et al. 2022, Cascaded Diffusion Models; Saharia et al. 2022, Imagen): a base
pixel model, then super-resolution models, each upscaling its predecessor's output.

`Cascade([base, sr_1, …])` takes `PixelPipeline`s (or run folders / model files): the base generates from
noise, stage k > 0 must be an SR model whose `low_res.size` is stage k-1's image size. Every stage has its
own `StageOptions` (sampler, steps, guidance, seed, x0 clipping, aug level); unset fields take the stage
model's defaults, x0 clipping included (static [-1, 1] unless the model file says otherwise). Imagen's
dynamic thresholding is one option away (`clip_x0="dynamic"`), not the default: on images whose
background sits at -1 (shapes, digits) it divides x0_hat by its 99.5th percentile |x0_hat| > 1 at every
step and greys the background (benchmarks/cascade.py: SR consistency RMSE 0.32 against 0.11 static). The
prompt (text stages) or class label (class stages) goes to each stage that takes one. Stage k's image i
uses the seed `seed + k * STAGE_SEED_STRIDE + i`, so the stages' noises are independent and any image
regenerates alone. Each image's metadata holds every stage's settings under "cascade"; `generation_kwargs`
turns it back into the call that regenerates the same pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .options import SamplingOptions
from .pixel import Labels, PixelPipeline, Prompts

__all__ = ["Cascade", "CascadeResult", "StageOptions", "generation_kwargs", "STAGE_SEED_STRIDE"]

STAGE_SEED_STRIDE = 1_000_003  # stage k's seeds start at seed + k * stride (a prime, past any batch size)
_OPTION_KEYS = ("sampler", "steps", "spacing", "karras", "guidance_scale", "eta", "seed", "clip_x0")


@dataclass(frozen=True, kw_only=True)
class StageOptions:
    """How one stage samples: `options` (None fields, clip_x0 included: the stage model's defaults)
    and, for SR stages, `aug_level` in [0, 1] (None: the model's default, 0.25)."""

    options: SamplingOptions | None = None
    aug_level: float | None = None


class CascadeResult(NamedTuple):
    """The last stage's images `[N, C, H, W]` in [-1, 1], one metadata dict each, and every stage's
    images (`stages[0]` the base's)."""

    images: Tensor
    metadata: list[dict[str, Any]]
    stages: list[Tensor]


def _as_pipeline(stage: PixelPipeline | str | Path, device: str | torch.device) -> PixelPipeline:
    return stage if isinstance(stage, PixelPipeline) else PixelPipeline.load(stage, device=device)


class Cascade:
    """A base model and SR stages sampled in a chain (see the module docstring)."""

    def __init__(self, stages: Sequence[PixelPipeline | str | Path], *, device: str | torch.device = "auto"):
        stages = list(stages)
        if len(stages) < 2:
            raise ValueError(f"a cascade needs a base model and at least one super-resolution model; got "
                             f"{len(stages)} stage(s)")
        self.stages = [_as_pipeline(s, device) for s in stages]
        base = self.stages[0]
        if base.low_res is not None:
            raise ValueError(f"stage 0 ({base.name}) is a super-resolution model; a cascade starts with a "
                             "model that generates from noise")
        if base.cold is not None:
            raise ValueError(f"stage 0 ({base.name}) is a cold-diffusion model; cascades chain Gaussian ones")
        for k in range(1, len(self.stages)):
            prev, sr = self.stages[k - 1], self.stages[k]
            if sr.low_res is None:
                raise ValueError(f"stage {k} ({sr.name}) is not a super-resolution model (no low_res input); "
                                 "every stage after the base must upscale its predecessor")
            if sr.low_res.size != prev.image_size:
                raise ValueError(
                    f"the stages' sizes do not chain: stage {k - 1} ({prev.name}) makes "
                    f"{prev.image_size}x{prev.image_size} images, stage {k} ({sr.name}) upscales "
                    f"{sr.low_res.size}x{sr.low_res.size} ones; use an SR model trained with "
                    f"low_res.size = {prev.image_size}"
                )
            c_prev, c_sr = int(prev.unet.config.in_channels), int(sr.unet.config.in_channels)
            if c_prev != c_sr:
                raise ValueError(f"stage {k - 1} makes {c_prev}-channel images but stage {k} takes {c_sr}")

    @classmethod
    def load(cls, paths: Sequence[str | Path], *, device: str | torch.device = "auto") -> Cascade:
        """From run folders or model files, base first."""
        return cls(list(paths), device=device)

    @property
    def image_size(self) -> int:
        """Side of the final images."""
        return self.stages[-1].image_size

    def _stage_options(self, stages: Sequence[StageOptions | None] | None) -> list[StageOptions]:
        if stages is None:
            return [StageOptions() for _ in self.stages]
        stages = list(stages)
        if len(stages) != len(self.stages):
            raise ValueError(f"got options for {len(stages)} stages; this cascade has {len(self.stages)}")
        out = [s or StageOptions() for s in stages]
        if out[0].aug_level is not None:
            raise ValueError("aug_level applies to the super-resolution stages, not to stage 0 (the base)")
        return out

    def _inputs(self, pipe: PixelPipeline, prompts: Prompts, negative: Prompts, labels: Labels) -> dict:
        """The condition arguments stage `pipe` takes (a prompt to text stages, labels to class stages)."""
        if pipe.condition == "text":
            return {"prompts": prompts, "negative_prompt": negative}
        if pipe.condition == "class":
            return {"class_labels": labels}
        return {}

    @torch.no_grad()
    def generate(
        self,
        num: int,
        *,
        prompts: Prompts = None,
        negative_prompt: Prompts = None,
        class_labels: Labels = None,
        seed: int = 0,
        stages: Sequence[StageOptions | None] | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> CascadeResult:
        """`num` images through every stage; `stages`: one `StageOptions` per stage (None: defaults)."""
        conds = {p.condition for p in self.stages}
        if prompts is not None and "text" not in conds:
            raise ValueError("no stage of this cascade is text-conditional: it takes no prompts")
        if class_labels is not None and "class" not in conds:
            raise ValueError("no stage of this cascade is class-conditional: it takes no class labels")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        plan = self._stage_options(stages)
        images: Tensor | None = None
        outputs, metas = [], []
        for k, (pipe, st) in enumerate(zip(self.stages, plan)):
            o = st.options or SamplingOptions()
            o = o.replace(seed=seed + k * STAGE_SEED_STRIDE if o.seed is None else o.seed)
            common = dict(options=o, batch_size=batch_size, progress=progress,
                          **self._inputs(pipe, prompts, negative_prompt, class_labels))
            if k == 0:
                images, meta = pipe.generate(num, **common)
            else:
                images, meta = pipe.upscale(images, aug_level=st.aug_level, **common)
            outputs.append(images)
            metas.append(meta)
        per_image = []
        for i in range(num):
            stage_meta = [dict(m[i], model=p.name, model_hash=p.model_hash, condition=p.condition)
                          for p, m in zip(self.stages, metas)]
            last = stage_meta[-1]
            per_image.append({
                "prompt": stage_meta[0].get("prompt", ""), "negative_prompt": stage_meta[0].get(
                    "negative_prompt", ""), "seed": int(seed) + i, "width": self.image_size,
                "height": self.image_size, "sampler": last["sampler"], "steps": last["steps"],
                "guidance_scale": last["guidance_scale"], "model": " > ".join(p.name for p in self.stages),
                "cascade": stage_meta,
            })  # fmt: skip
            for m in stage_meta:
                if "class_label" in m:
                    per_image[-1]["class_label"] = m["class_label"]
        return CascadeResult(outputs[-1], per_image, outputs)


def generation_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `Cascade.generate(1, **kwargs)` that regenerate the image `meta` (one
    image's cascade metadata, e.g. the PNG's "ddpm" JSON) describes."""
    stages = meta.get("cascade")
    if not isinstance(stages, list) or not stages:
        raise ValueError("the metadata has no 'cascade' list of stages; it was not written by a Cascade")
    plan = []
    for k, m in enumerate(stages):
        missing = [key for key in _OPTION_KEYS if key not in m]
        if missing:
            raise ValueError(f"stage {k} of the metadata lacks {missing}; it was not written by a Cascade")
        o = SamplingOptions(**{key: m[key] for key in _OPTION_KEYS if key != "clip_x0"},
                            clip_x0=m["clip_x0"] or "none")
        plan.append(StageOptions(options=o, aug_level=m.get("aug_level") if k else None))
    out: dict[str, Any] = {"stages": plan, "seed": int(meta.get("seed", 0))}
    conditions = [m.get("condition") for m in stages]
    if "class" in conditions:
        out["class_labels"] = int(next(m["class_label"] for m in stages if m.get("condition") == "class"))
    if "text" in conditions:
        text = next(m for m in stages if m.get("condition") == "text")
        out["prompts"], out["negative_prompt"] = text["prompt"], text["negative_prompt"]
    return out
