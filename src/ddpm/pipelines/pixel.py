"""The pixel-space pipeline: a trained model (run folder or model file) -> images with reproduction metadata.

Image i of a call uses its own CPU generator seeded `seed + i` for its starting noise and any sampler noise,
so it comes out the same alone, in any batch and on any device (DESIGN.md, "Seeds"). Pixel models are
sampled with x0 clipped to the data range ([-1, 1], `clip_x0="static"`) unless the model file says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..io.model_file import file_hash, load_model_file
from ..models.unet import UNet, UNetConfig
from ..schedules import DiscreteSchedule, from_config

__all__ = ["DiffusionPipeline", "LoadedModel", "open_model", "load_part", "resolve_device"]

UNET_PREFIX = "unet."


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_part(
    module: torch.nn.Module, tensors: dict[str, Tensor], prefix: str, file: Path, what: str
) -> None:
    """Load the `prefix`-ed tensors of a model file into `module`, strictly, with a readable error."""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{file}: {what} weights do not match the config in its metadata (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); the file may be damaged or written by another tool"
        )


class LoadedModel(NamedTuple):
    """A model file opened for a pipeline: its tensors and metadata, the UNet (eval mode, on `device`)."""

    file: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]
    unet: UNet
    schedule: DiscreteSchedule
    device: torch.device
    model_hash: str
    name: str


def open_model(
    path: str | Path, *, device: str | torch.device, kinds: tuple[str, ...], wrong_kind: str
) -> LoadedModel:
    """A run folder (its latest checkpoint's EMA weights) or a model `.safetensors` file whose conditioning
    type is one of `kinds` (else ValueError ending with `wrong_kind`, the hint what to use instead)."""
    path = Path(path)
    if path.is_dir():
        from ..io.run_folder import run_model_file

        file = run_model_file(path)
    elif path.is_file():
        file = path
    else:
        raise FileNotFoundError(f"no such run folder or model file: {str(path)!r}")
    tensors, meta = load_model_file(file)
    kind = (meta.get("conditioning") or {}).get("type", "none")
    if kind not in kinds:
        raise ValueError(f"{path} is a {kind}-conditional model; {wrong_kind}")
    for section in ("unet", "diffusion"):
        if section not in meta:
            raise ValueError(f"{file}: model metadata lacks the {section!r} section")
    dev = resolve_device(device)
    unet = UNet(UNetConfig.from_dict(meta["unet"]))
    load_part(unet, tensors, UNET_PREFIX, file, "UNet")
    unet.to(dev).eval().requires_grad_(False)
    schedule = from_config(meta["diffusion"]["schedule"])
    run = (meta.get("training") or {}).get("run")
    name = file.stem if path.is_file() else (run or path.name)
    return LoadedModel(file, tensors, meta, unet, schedule, dev, file_hash(file), name)


class DiffusionPipeline:
    """A loaded unconditional or class-conditional pixel model: `unet`, `schedule`, `meta`, `device`."""

    def __init__(
        self,
        unet: UNet,
        schedule: DiscreteSchedule,
        meta: dict[str, Any],
        *,
        device: torch.device,
        model_hash: str = "",
        name: str = "",
    ):
        self.unet = unet
        self.schedule = schedule
        self.meta = meta
        self.device = device
        self.model_hash = model_hash
        self.name = name

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "auto") -> DiffusionPipeline:
        """From a run folder (its latest checkpoint's EMA weights) or a model `.safetensors` file."""
        m = open_model(
            path, device=device, kinds=("none", "class"),
            wrong_kind="DiffusionPipeline samples unconditional and class-conditional pixel models (use the "
            "text-to-image pipeline for prompts)",
        )  # fmt: skip
        return cls(m.unet, m.schedule, m.meta, device=m.device, model_hash=m.model_hash, name=m.name)

    # ------------------------------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional model (labels 0 … K-1), else None."""
        cond = self.meta.get("conditioning") or {}
        return int(cond["num_classes"]) if cond.get("type") == "class" else None

    @property
    def class_names(self) -> list[str] | None:
        names = (self.meta.get("data") or {}).get("class_names")
        if self.num_classes is None:
            return None
        return list(names) if names else [str(k) for k in range(self.num_classes)]

    def _labels(self, num: int, class_labels: Any) -> Tensor | None:
        k = self.num_classes
        if k is None:
            if class_labels is not None:
                raise ValueError("this model is unconditional: it takes no class labels (drop --class)")
            return None
        if class_labels is None:
            # classes in contiguous blocks: a grid with num // K per row shows one class per row
            return torch.arange(num) * k // num
        names = self.class_names or []
        if isinstance(class_labels, Tensor) and class_labels.ndim == 0:
            class_labels = class_labels.item()
        if isinstance(class_labels, (str, int)):
            class_labels = [class_labels] * num
        values = class_labels.tolist() if isinstance(class_labels, Tensor) else list(class_labels)
        if len(values) != num:
            raise ValueError(f"got {len(values)} class labels for {num} images; give one, or one per image")
        out = []
        for v in values:
            if isinstance(v, str) and v in names:
                v = names.index(v)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < k:
                shown = ", ".join(names)
                raise ValueError(f"unknown class {v!r}; this model knows {k} classes: 0 … {k - 1} ({shown})")
            out.append(v)
        return torch.tensor(out, dtype=torch.int64)

    # ------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        num: int,
        *,
        seed: int = 0,
        class_labels: int | str | Sequence[int | str] | Tensor | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float = 0.0,
        batch_size: int = 64,
        progress: bool = False,
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        """`num` images `[N, C, H, W]` in [-1, 1] (CPU, float32) and one metadata dict per image.

        Image i uses `torch.Generator().manual_seed(seed + i)`. `class_labels`: one label (index or
        class name) for all, one per image, or None (classes in equal contiguous blocks). Unset sampling
        options take the model file's defaults.
        """
        from .. import sample

        if int(num) != num or num < 1:
            raise ValueError(f"num must be a positive integer, got {num!r}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        defaults = self.meta.get("sampling") or {}
        labels = self._labels(num, class_labels)
        if guidance_scale is None:
            guidance_scale = float(defaults.get("guidance_scale", 1.0)) if labels is not None else 1.0
        if labels is None and guidance_scale != 1.0:
            raise ValueError(
                "classifier-free guidance needs a class- or text-conditional model; this one is "
                "unconditional, so leave the guidance scale at 1"
            )
        sampler = sampler or defaults.get("sampler", "dpmpp_2m")
        steps = int(steps or defaults.get("steps", 20))
        clip_x0 = defaults.get("clip_x0", "static")
        diffusion = self.meta["diffusion"]
        prediction = diffusion.get("prediction", "eps")
        data = self.meta.get("data") or {}
        c = int(self.unet.config.in_channels)
        size = int(data.get("image_size") or 32)
        null = self.num_classes

        images = []
        for start in range(0, num, batch_size):
            stop = min(num, start + batch_size)
            gens = [torch.Generator().manual_seed(seed + i) for i in range(start, stop)]
            noise = torch.stack([torch.randn(c, size, size, generator=g) for g in gens]).to(self.device)
            cond = uncond = None
            if labels is not None:
                y = labels[start:stop].to(self.device)
                cond = {"class_labels": y}
                uncond = {"class_labels": torch.full_like(y, null)} if guidance_scale != 1.0 else None
            x0 = sample(
                self.unet, noise, schedule=self.schedule, sampler=sampler, steps=steps, prediction=prediction,
                eta=eta, guidance_scale=guidance_scale, cond=cond, uncond=uncond, clip_x0=clip_x0,
                generator=gens, progress=progress,
            )
            images.append(x0.float().clamp(-1, 1).cpu())

        metadata = []
        for i in range(num):
            m: dict[str, Any] = {
                "prompt": "", "negative_prompt": "", "seed": seed + i, "sampler": sampler, "steps": steps,
                "spacing": "trailing", "karras": False, "eta": eta, "guidance_scale": guidance_scale,
                "clip_x0": clip_x0, "prediction": prediction, "width": size, "height": size,
                "model_hash": self.model_hash, "model": self.name,
            }
            if labels is not None:
                k = int(labels[i])
                name = self.class_names[k] if self.class_names else str(k)
                prompt = f"class {k}" + (f" ({name})" if name != str(k) else "")
                m.update(class_label=k, class_name=name, prompt=prompt)
            metadata.append(m)
        return torch.cat(images), metadata
