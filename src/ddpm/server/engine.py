"""The one object that calls a pipeline: a `GenerationRequest` -> images and metadata, for a Stable
Diffusion pipeline (txt2img, img2img, inpaint) or a ddpm pixel model (`PixelPipeline`: txt2img only, at
the model's own size). Only the job worker calls `generate`; `check` runs on the request's thread before
a job is queued, so a request the model cannot serve is refused at once with a 4xx."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..pipelines import PixelPipeline, SamplingOptions
from .a1111 import GenerationRequest, RequestError

__all__ = ["Engine"]


class Engine:
    """A loaded pipeline behind the server: its name, hash, kind, default size and `generate`."""

    def __init__(self, pipeline: Any, *, name: str = "") -> None:
        self.pipeline = pipeline
        self.kind = "pixel" if isinstance(pipeline, PixelPipeline) else "sd"
        if self.kind == "sd":
            self.name = name or pipeline.name or "model"
            self.model_hash = str(pipeline.model_hash or "")
            self.default_size = int(pipeline.default_size)
            self.size_multiple = int(pipeline.size_multiple)
            self.modes = ("txt2img", "img2img", "inpaint")
        else:
            self.name = name or "model"
            self.model_hash = str(getattr(pipeline, "file_hash", "") or "")
            self.default_size = int(pipeline.image_size)
            self.size_multiple = 1
            self.modes = ("txt2img",)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.model_hash, "kind": self.kind, "modes": list(self.modes),
                "default_size": self.default_size, "size_multiple": self.size_multiple}  # fmt: skip

    def check(self, req: GenerationRequest) -> None:
        """RequestError (422) for a request this model cannot serve, before it is queued."""
        if req.mode not in self.modes:
            raise RequestError(f"this {self.kind} model does {list(self.modes)} only, not {req.mode}")
        if self.kind == "sd":
            m = self.size_multiple
            for side, v in (("width", req.width), ("height", req.height)):
                if v % m:
                    lo, hi = max(m, v // m * m), (v // m + 1) * m
                    raise RequestError(f"{side}={v} is not a multiple of {m}; use {lo} or {hi}")
            if req.mode == "inpaint" and req.mask is None:
                raise RequestError("inpainting needs a mask")

    def generate(
        self, req: GenerationRequest, seed: int, num: int, callback: Callable[[int, int, Tensor], None]
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        """`num` images `[num, 3, H, W]` in [-1, 1] with seeds seed … seed + num - 1, and their metadata."""
        if self.kind == "pixel":
            return self._pixel(req, seed, num, callback)
        options = SamplingOptions(sampler=req.sampler, steps=req.steps, karras=req.karras,
                                  guidance_scale=req.cfg_scale, eta=req.eta, seed=seed)  # fmt: skip
        kw: dict[str, Any] = dict(negative_prompt=req.negative_prompt, options=options, height=req.height,
                                  width=req.width, num_images=num, callback=callback)  # fmt: skip
        p = self.pipeline
        if req.mode == "txt2img":
            result = p.txt2img(req.prompt, **kw)
        elif req.mode == "img2img":
            result = p.img2img(req.init_image, req.prompt, strength=req.strength, **kw)
        else:
            result = p.inpaint(req.init_image, req.mask, req.prompt, strength=req.strength, **kw)
        return result.images, result.metadata

    def _pixel(
        self, req: GenerationRequest, seed: int, num: int, callback: Callable[[int, int, Tensor], None]
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        p = self.pipeline
        text = p.condition == "text"
        guidance = req.cfg_scale if p.condition != "none" else 1.0
        options = SamplingOptions(sampler=req.sampler, steps=req.steps, karras=req.karras,
                                  guidance_scale=guidance, eta=req.eta, seed=seed)  # fmt: skip
        images, meta = p.generate(
            num, prompts=req.prompt if text else None, negative_prompt=req.negative_prompt if text else None,
            options=options, batch_size=num, callback=callback,
        )  # fmt: skip
        if images.shape[1] == 1:  # grey models: three equal channels for the page and PNGs
            images = images.expand(-1, 3, -1, -1)
        meta = [dict(m, width=images.shape[-1], height=images.shape[-2]) for m in meta]
        return images, meta
