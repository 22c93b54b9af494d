"""AUTOMATIC1111's web-API fields -> one checked `GenerationRequest`, and our results -> its answer.

Field names are A1111's (`/sdapi/v1/txt2img`, `/sdapi/v1/img2img`), as the `webuiapi` client sends them;
fields we do not use (hires fix, scripts, restore_faces, …) are ignored. Every bad value is a
`RequestError` with a 4xx status that names the field and the limit, never an exception from deep inside.
Seeds as A1111 numbers them: image i of a request (over batch_size x n_iter) has seed + i.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageChops

__all__ = [
    "SAMPLERS", "SCHEDULERS", "Limits", "GenerationRequest", "RequestError", "parse_request", "decode_image",
    "sampler_list", "a1111_info", "display_name",
]  # fmt: skip

# A1111 sampler name -> (our sampler, Karras sigmas, aliases). Ours are accepted as aliases too.
SAMPLERS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "DPM++ 2M": ("dpmpp_2m", False, ("k_dpmpp_2m", "dpmpp_2m")),
    "DPM++ 2M Karras": ("dpmpp_2m", True, ("k_dpmpp_2m_ka", "dpmpp_2m_karras")),
    "Euler a": ("euler_a", False, ("k_euler_a", "euler_a")),
    "Euler": ("euler", False, ("k_euler", "euler")),
    "Euler Karras": ("euler", True, ("k_euler_ka", "euler_karras")),
    "Heun": ("heun", False, ("k_heun", "heun")),
    "DDIM": ("ddim", False, ("ddim",)),
    "PLMS": ("plms", False, ("plms",)),
    "DDPM": ("ddpm", False, ("ddpm",)),
    "DPM++ 3M": ("dpmpp_3m", False, ("k_dpmpp_3m", "dpmpp_3m")),
    "DPM++ 3M Karras": ("dpmpp_3m", True, ("k_dpmpp_3m_ka", "dpmpp_3m_karras")),
    "DPM++ 2M SDE": ("dpmpp_2m_sde", False, ("k_dpmpp_2m_sde", "dpmpp_2m_sde")),
    "DPM++ 2M SDE Karras": ("dpmpp_2m_sde", True, ("k_dpmpp_2m_sde_ka", "dpmpp_2m_sde_karras")),
    "UniPC": ("unipc", False, ("unipc",)),
    "LMS": ("lms", False, ("k_lms", "lms")),
    "LMS Karras": ("lms", True, ("k_lms_ka", "lms_karras")),
}
# A1111 1.9+'s separate `scheduler` field: None keeps the sampler name's grid.
SCHEDULERS = {"automatic": None, "": None, "uniform": False, "karras": True}
KARRAS_CAPABLE = ("euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "lms", "unipc")
SEED_MAX = 2**32 - 1  # A1111's random seeds are 32-bit; any seed up to 2^53 is accepted
_LOOKUP = {k.lower(): k for k in SAMPLERS} | {a.lower(): k for k, v in SAMPLERS.items() for a in v[2]}


class RequestError(ValueError):
    """A refused request: `status` (4xx) and a message that says what to change."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; a request past one is refused with a 4xx naming it."""

    max_steps: int = 150
    max_images: int = 16  # batch_size x n_iter
    max_batch: int = 8
    max_side: int = 2048
    max_pixels: int = 1024 * 1024  # width x height
    max_prompt: int = 10_000  # characters
    max_body: int = 32 * 1024 * 1024  # bytes of one request
    max_queue: int = 64  # queued jobs


@dataclass
class GenerationRequest:
    """One checked request: everything the worker needs to call the pipeline."""

    mode: str  # txt2img, img2img, inpaint
    prompt: str
    negative_prompt: str
    seed: int
    sampler: str  # ours
    karras: bool
    steps: int
    cfg_scale: float
    width: int
    height: int
    batch_size: int
    n_iter: int
    eta: float = 0.0
    strength: float = 1.0
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    sampler_name: str = ""  # as A1111 names it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return self.batch_size * self.n_iter


def display_name(sampler: str, karras: bool) -> str:
    """Our (sampler, karras) as the A1111 name."""
    for name, (ours, k, _) in SAMPLERS.items():
        if ours == sampler and k == karras:
            return name
    return sampler + (" Karras" if karras else "")


def sampler_list() -> list[dict[str, Any]]:
    """`GET /sdapi/v1/samplers`: [{name, aliases, options}]."""
    return [{"name": name, "aliases": list(aliases), "options": {"scheduler": "karras"} if k else {}}
            for name, (_, k, aliases) in SAMPLERS.items()]  # fmt: skip


def _get(body: dict[str, Any], name: str, default: Any) -> Any:
    value = body.get(name, default)
    return default if value is None else value


def _int(body: dict[str, Any], name: str, default: int, low: int, high: int, limit: str = "") -> int:
    value = _get(body, name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        why = f" ({limit})" if limit else ""
        raise RequestError(f"{name} must lie in {low} … {high}{why}, got {value}")
    return value


def _float(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = _get(body, name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{name} must lie in {low} … {high}, got {value}")
    return float(value)


def _str(body: dict[str, Any], name: str, limits: Limits) -> str:
    value = _get(body, name, "")
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > limits.max_prompt:
        raise RequestError(f"{name} is {len(value)} characters; the limit is {limits.max_prompt}", 413)
    return value


def decode_image(value: Any, name: str, limits: Limits) -> Image.Image:
    """A base64 PNG/JPEG/WebP (with or without a `data:image/…;base64,` prefix) -> an RGB or L image,
    refusing bad base64, non-images and images past the pixel limit (checked from the header)."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"{name} must be a base64-encoded image string")
    text = value.strip()
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise RequestError(f"{name}: a data: URL must be base64 (data:image/png;base64,…)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{name} is not valid base64 ({e})") from None
    try:
        im = Image.open(io.BytesIO(raw))
        if im.format not in ("PNG", "JPEG", "WEBP"):
            raise RequestError(f"{name} must be a PNG, JPEG or WebP image, got {im.format}")
        if im.width * im.height > 4 * limits.max_pixels:
            raise RequestError(
                f"{name} is {im.width}x{im.height}; the limit is {4 * limits.max_pixels} pixels", 413
            )
        im.load()
    except RequestError:
        raise
    except Exception as e:  # PIL raises many kinds for a damaged file
        raise RequestError(f"{name} does not decode as an image ({type(e).__name__}: {e})") from None
    return im


def _sampler(body: dict[str, Any]) -> tuple[str, bool, str]:
    name = body.get("sampler_name") or body.get("sampler_index") or "Euler a"
    if not isinstance(name, str) or name.lower() not in _LOOKUP:
        raise RequestError(f"unknown sampler {name!r}; GET /sdapi/v1/samplers lists them: {list(SAMPLERS)}")
    canonical = _LOOKUP[name.lower()]
    sampler, karras, _ = SAMPLERS[canonical]
    scheduler = body.get("scheduler")
    if scheduler is not None:
        if not isinstance(scheduler, str) or scheduler.lower() not in SCHEDULERS:
            names = [k for k in SCHEDULERS if k]
            raise RequestError(f"unknown scheduler {scheduler!r}; choose one of {names}")
        chosen = SCHEDULERS[scheduler.lower()]
        karras = karras if chosen is None else chosen
    if karras and sampler not in KARRAS_CAPABLE:
        raise RequestError(f"the Karras schedule applies to {list(KARRAS_CAPABLE)}, not to {canonical!r}")
    return sampler, karras, display_name(sampler, karras)


def parse_request(body: Any, mode: str, limits: Limits, *, default_size: int = 512) -> GenerationRequest:
    """A1111's txt2img / img2img JSON body -> a checked `GenerationRequest` (mode "inpaint" when an
    img2img body carries a mask)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    sampler, karras, sampler_name = _sampler(body)
    steps = _int(body, "steps", 20, 1, limits.max_steps, "the server's step limit")
    width = _int(body, "width", default_size, 8, limits.max_side, "the server's side limit")
    height = _int(body, "height", default_size, 8, limits.max_side, "the server's side limit")
    if width * height > limits.max_pixels:
        raise RequestError(f"width x height = {width * height} pixels; the limit is {limits.max_pixels}", 413)
    batch = _int(body, "batch_size", 1, 1, limits.max_batch, "the server's batch limit")
    n_iter = _int(body, "n_iter", 1, 1, limits.max_images, "the server's image limit")
    if batch * n_iter > limits.max_images:
        raise RequestError(f"batch_size x n_iter = {batch * n_iter} images; the limit is {limits.max_images}")
    seed = _int(body, "seed", -1, -1, 2**53, "-1 draws a random seed")
    if seed == -1:
        seed = secrets.randbelow(SEED_MAX + 1 - limits.max_images)
    req = GenerationRequest(
        mode=mode, prompt=_str(body, "prompt", limits), negative_prompt=_str(body, "negative_prompt", limits),
        seed=seed, sampler=sampler, karras=karras, steps=steps,
        cfg_scale=_float(body, "cfg_scale", 7.0, 0.0, 100.0), width=width, height=height, batch_size=batch,
        n_iter=n_iter, sampler_name=sampler_name,
    )  # fmt: skip
    if sampler == "ddim":  # A1111 passes `eta` to DDIM only
        req.eta = _float(body, "eta", 0.0, 0.0, 1.0)
    if mode == "txt2img":
        return req
    images = body.get("init_images")
    if not isinstance(images, list) or not images:
        raise RequestError("img2img needs init_images: a list with one base64 image")
    req.init_image = decode_image(images[0], "init_images[0]", limits).convert("RGB")
    req.strength = _float(body, "denoising_strength", 0.75, 0.0, 1.0)
    if req.strength <= 0.0:
        raise RequestError("denoising_strength must be above 0 (0 would return the image unchanged)")
    if int(steps * req.strength) < 1:
        raise RequestError(f"denoising_strength={req.strength} leaves no step of {steps}; raise either")
    if body.get("mask"):
        mask = decode_image(body["mask"], "mask", limits)
        if mask.mode in ("RGBA", "LA", "PA", "P"):  # white = repaint; transparent counts as black
            mask = mask.convert("RGBA")
            mask = ImageChops.multiply(mask.convert("L"), mask.getchannel("A"))
        mask = mask.convert("L")
        if body.get("inpainting_mask_invert") in (1, True):
            mask = mask.point(lambda v: 255 - v)
        req.mask, req.mode = mask, "inpaint"
    return req


def a1111_info(req: GenerationRequest, metadata: list[dict[str, Any]], infotexts: list[str],
               *, model: str, model_hash: str, interrupted: bool = False) -> str:
    """The `info` JSON string of A1111's answer, for the images that were made."""
    seeds = [int(m["seed"]) for m in metadata] or [req.seed]
    info = {
        "prompt": req.prompt, "all_prompts": [req.prompt] * len(metadata),
        "negative_prompt": req.negative_prompt, "all_negative_prompts": [req.negative_prompt] * len(metadata),
        "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(metadata),
        "subseed_strength": 0, "width": req.width, "height": req.height, "sampler_name": req.sampler_name,
        "cfg_scale": req.cfg_scale, "steps": req.steps, "batch_size": req.batch_size, "n_iter": req.n_iter,
        "denoising_strength": req.strength if req.mode != "txt2img" else None,
        "sd_model_name": model, "sd_model_hash": model_hash, "infotexts": infotexts,
        "job_timestamp": None, "interrupted": interrupted, "index_of_first_image": 0,
    }  # fmt: skip
    return json.dumps(info)
