"""The pixel-space pipeline: a trained model (run folder or model file) -> images with reproduction metadata.

One `PixelPipeline` serves unconditional, class-conditional and text-conditional models; what differs is
the conditioner, rebuilt from the file's `ModelMeta` (a text encoder's weights come from its "text_encoder."
keys). Image i of a call uses its own CPU generator seeded `seed + i` for its starting noise and any sampler
noise, so it comes out the same alone, in any batch and on any device (DESIGN.md, "Seeds"). For text models
the empty prompt "" is the unconditional embedding learnt through caption dropout, and a negative prompt
takes its place in classifier-free guidance. Pixel models are sampled with x0 clipped to the data range
(`clip_x0="static"`) unless the model file says otherwise.

A super-resolution model (`unet.low_res` in its file) is sampled the same way with its low-res input:
`upscale(images, aug_level=…)` (or `generate(num, low_res=…)`) augments image i's low-res version to the
level a with noise drawn from image i's generator right after its starting noise (`ddpm.conditioning.
low_res`), and passes it, with a, to both branches of classifier-free guidance (only the class or text
condition is dropped, as in Imagen).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..conditioning import (
    ClassConditioner,
    Conditioner,
    TextConditioner,
    Unconditional,
    text_conditioner_from_meta,
)
from ..conditioning.low_res import augment, check_level, downsample
from ..config.architectures import LowResConfig
from ..io.model_file import file_hash, load_model_file
from ..io.model_meta import ModelMeta
from ..models.unet import UNet, UNetConfig
from ..schedules import DiscreteSchedule, from_config
from .cold import check_sampler, cold_parts, cold_steps, generate_batch, restore_batch
from .options import SamplingOptions, image_metadata, resolve_device

if TYPE_CHECKING:
    from ..sampling.api import StepCallback

__all__ = ["PixelPipeline", "load_part"]

UNET_PREFIX = "unet."
Labels = int | str | Sequence[int | str] | Tensor | None
Prompts = str | Sequence[str] | None


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


def conditioner_from_meta(meta: ModelMeta, tensors: dict[str, Tensor], file: Path) -> Conditioner:
    """The conditioner a model file was trained with, its weights (if any) loaded from `tensors`."""
    if meta.condition == "class":
        return ClassConditioner(int(meta.conditioning.num_classes or 0), meta.class_names)
    if meta.condition == "text":
        cond = text_conditioner_from_meta(meta.conditioning.text_encoder or {})
        load_part(cond, tensors, cond.export_prefix, file, "text encoder")
        return cond
    if meta.condition == "clip_image":
        from ..conditioning.clip_image import ClipImageConditioner
        from ..io.clip_files import load_frozen_encoder

        source = meta.conditioning.image_encoder or {}
        encoder, _ = load_frozen_encoder(source, f"the unCLIP decoder {file}")
        return ClipImageConditioner(encoder, source)
    return Unconditional()


def _per_image(value: Prompts, num: int, name: str) -> list[str]:
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


def _positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class PixelPipeline:
    """A loaded pixel model: `unet`, `conditioner` (none, class or text), `schedule`, `meta` (`ModelMeta`)."""

    def __init__(
        self,
        unet: UNet,
        conditioner: Conditioner,
        schedule: DiscreteSchedule,
        meta: ModelMeta,
        *,
        device: torch.device,
        model_hash: str = "",
        name: str = "",
    ):
        self.unet = unet
        self.conditioner = conditioner.to(device).eval().requires_grad_(False)
        self.schedule = schedule
        self.meta = meta
        self.device = device
        self.model_hash = model_hash
        self.name = name
        self.cold = cold_parts(meta.diffusion)  # a cold-diffusion model's degradation and start prior

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "auto") -> PixelPipeline:
        """From a run folder (its latest checkpoint's EMA weights) or a model `.safetensors` file."""
        path = Path(path)
        if path.is_dir():
            from ..io.run_folder import run_model_file

            file = run_model_file(path)
        elif path.is_file():
            file = path
        else:
            raise FileNotFoundError(f"no such run folder or model file: {str(path)!r}")
        tensors, raw = load_model_file(file)
        meta = ModelMeta.from_dict(raw, source=str(file))
        if meta.kind == "prior":
            raise ValueError(f"{file} is an unCLIP prior: it samples image embeddings, not images; use it "
                             "with its decoder (`ddpm txt2img --model PRIOR --decoder DECODER`)")
        if meta.unet is None or meta.diffusion is None:
            raise ValueError(f"{file} is a {meta.kind} model, not a diffusion model; it cannot be sampled")
        dev = resolve_device(device)
        unet = UNet(UNetConfig.from_dict(meta.unet))
        load_part(unet, tensors, UNET_PREFIX, file, "UNet")
        unet.to(dev).eval().requires_grad_(False)
        conditioner = conditioner_from_meta(meta, tensors, file)
        name = file.stem if path.is_file() else (meta.training.run or path.name)
        schedule = from_config(meta.diffusion.schedule)
        return cls(unet, conditioner, schedule, meta, device=dev, model_hash=file_hash(file), name=name)

    # ------------------------------------------------------------------------------------- properties
    @property
    def condition(self) -> str:
        """"none", "class" or "text"."""
        return self.meta.condition

    @property
    def _kind(self) -> str:
        return "unconditional" if self.condition == "none" else f"{self.condition}-conditional"

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional model (labels 0 … K-1), else None."""
        return self.conditioner.num_classes if isinstance(self.conditioner, ClassConditioner) else None

    @property
    def class_names(self) -> list[str] | None:
        """Names of the classes of a class-conditional model, else None."""
        return self.meta.class_names

    @property
    def image_size(self) -> int:
        """Side of the images the model was trained on."""
        return int(self.meta.data.image_size or 32)

    @property
    def low_res(self) -> LowResConfig | None:
        """A super-resolution model's low-res settings (size, augmentation, default aug level), else None."""
        return self.unet.config.low_res_config

    def check_low_res(self, images: Tensor, *, resize: bool = False) -> Tensor:
        """`images` `[N, C, s, s]` in [-1, 1] as this SR model's low-res input (float32, CPU); another size
        is resized (antialiased bilinear) with `resize`, else a ValueError naming the expected size."""
        lr = self.low_res
        if lr is None:
            raise ValueError(f"this model is not a super-resolution model (its UNet has no low_res input); "
                             f"it generates {self.image_size}x{self.image_size} images from noise")
        c = int(self.unet.config.in_channels)
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != c:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"low-res images must be a tensor [N, {c}, {lr.size}, {lr.size}] in [-1, 1]; "
                             f"got {shape}")
        if images.shape[-2:] != (lr.size, lr.size):
            if not resize:
                h, w = images.shape[-2:]
                raise ValueError(f"this SR model upscales {lr.size}x{lr.size} images (its low_res.size) to "
                                 f"{self.image_size}x{self.image_size}; got {w}x{h}: resize the input to "
                                 f"{lr.size}x{lr.size} (resize=True does it)")
            images = downsample(images.float(), lr.size)
        return images.detach().float().cpu().clamp(-1, 1)

    def _aug_level(self, aug_level: float | None) -> float:
        lr = self.low_res
        if lr is None:
            if aug_level is not None:
                raise ValueError("aug_level applies to super-resolution models only")
            return 0.0
        level = lr.aug_level if aug_level is None else check_level(aug_level)
        if lr.augment == "none" and level != 0.0:
            raise ValueError(f"this SR model was trained on clean low-res inputs (low_res.augment = 'none'): "
                             f"it knows aug_level 0 only, got {level}")
        return level

    @torch.no_grad()
    def upscale(
        self,
        images: Tensor,
        *,
        aug_level: float | None = None,
        prompts: Prompts = None,
        negative_prompt: Prompts = None,
        class_labels: Labels = None,
        options: SamplingOptions | None = None,
        batch_size: int = 64,
        resize: bool = False,
        progress: bool = False,
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        """Upscale low-res `images` `[N, C, s, s]` in [-1, 1] with an SR model: `[N, C, H, W]` and one
        metadata dict each (see `generate`); `aug_level` in [0, 1], default the model's (0.25)."""
        low = self.check_low_res(images, resize=resize)
        return self.generate(len(low), prompts=prompts, negative_prompt=negative_prompt,
                             class_labels=class_labels, options=options, batch_size=batch_size,
                             progress=progress, low_res=low, aug_level=aug_level)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], *, warn: bool = True) -> Tensor:
        """Text-encoder states `[B, L, D]` of `prompts` (a text model's cross-attention context)."""
        if not isinstance(self.conditioner, TextConditioner):
            raise ValueError(f"this model is {self._kind}: it takes no prompts")
        return self.conditioner.encode_prompts(list(prompts), device=self.device, warn=warn)

    def _labels(self, num: int, class_labels: Labels) -> Tensor | None:
        k = self.num_classes
        if k is None:
            if class_labels is not None:
                raise ValueError(f"this model is {self._kind}: it takes no class labels (drop --class)")
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

    def _texts(self, num: int, prompts: Prompts, negative_prompt: Prompts) -> tuple[list[str], list[str]]:
        if self.condition != "text" and (prompts is not None or negative_prompt is not None):
            raise ValueError(f"this model is {self._kind}: it takes no prompts (use `ddpm sample`)")
        return _per_image(prompts, num, "prompt"), _per_image(negative_prompt, num, "negative prompt")

    def resolve(self, options: SamplingOptions | None) -> SamplingOptions:
        """`options` with every unset field taken from the model file's sampling defaults."""
        o = options or SamplingOptions()
        if o.clip_skip is not None:
            raise ValueError("clip_skip applies to Stable Diffusion checkpoints only")
        d = self.meta.sampling
        guidance = o.guidance_scale
        if guidance is None:
            guidance = d.guidance_scale if self.condition != "none" else 1.0
        if self.condition == "none" and guidance != 1.0:
            raise ValueError(
                "classifier-free guidance needs a class- or text-conditional model; this one is "
                "unconditional, so leave the guidance scale at 1"
            )
        sampler = o.sampler or d.sampler
        check_sampler(sampler, self.cold)
        steps = o.steps or d.steps
        if self.cold is not None:
            steps = cold_steps(sampler, steps, self.cold.degradation.levels)
        return o.replace(
            sampler=sampler, steps=steps, spacing=o.spacing or "trailing",
            guidance_scale=float(guidance), seed=0 if o.seed is None else o.seed,
            clip_x0=o.clip_x0 or d.clip_x0 or "none",
        )  # fmt: skip

    def _conditions(
        self, labels: Tensor | None, texts: list[str], negatives: list[str], guided: bool
    ) -> tuple[dict[str, Tensor] | None, dict[str, Tensor] | None]:
        """(cond, uncond) model keyword arguments of one batch."""
        if labels is not None:
            y = labels.to(self.device)
            null = {"class_labels": torch.full_like(y, int(self.num_classes or 0))}
            return {"class_labels": y}, (null if guided else None)
        if self.condition == "text":
            cond = {"context": self.encode(texts, warn=False)}
            return cond, ({"context": self.encode(negatives, warn=False)} if guided else None)
        return None, None

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """An unCLIP decoder's conditions: the scaled embeddings `[N, E]` of images `[N, 3, S, S]` in [-1, 1]
        by its frozen image encoder."""
        if self.condition != "clip_image":
            raise ValueError(f"this model is {self._kind}: it is not an unCLIP decoder, so it takes no image "
                             "embeddings")
        return self.conditioner.embed(images.float().to(self.device)).cpu()

    def _check_embeds(self, num: int, image_embeds: Tensor | None) -> Tensor | None:
        if self.condition != "clip_image":
            if image_embeds is not None:
                raise ValueError(f"this model is {self._kind}: image_embeds are for unCLIP decoders")
            return None
        dim = self.conditioner.embed_dim
        if image_embeds is None:
            raise ValueError("this model is an unCLIP decoder: it draws images from image embeddings "
                             "(`ddpm variations`, or `ddpm txt2img --model PRIOR --decoder DECODER`)")
        if not isinstance(image_embeds, Tensor) or image_embeds.shape != (num, dim):
            shape = tuple(image_embeds.shape) if isinstance(image_embeds, Tensor) else type(image_embeds)
            raise ValueError(f"image_embeds must be a tensor [{num}, {dim}] (one per image); got {shape}")
        return image_embeds.detach().float().cpu()

    @torch.no_grad()
    def variations(
        self, image: Tensor, num: int, *, options: SamplingOptions | None = None, batch_size: int = 64,
        progress: bool = False,
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        """unCLIP image variations: `num` images decoded from the embedding of `image` `[3, S, S]` (or
        `[1, 3, S, S]`) in [-1, 1], image i from seed + i; each metadata dict records the embedding."""
        x = image[None] if image.ndim == 3 else image
        z = self.encode_images(x)
        images, metas = self.generate(num, image_embeds=z.expand(num, -1).clone(), options=options,
                                      batch_size=batch_size, progress=progress)
        for m in metas:
            m["image_embed"] = [round(float(v), 6) for v in z[0]]
        return images, metas

    @torch.no_grad()
    def generate(
        self,
        num: int,
        *,
        prompts: Prompts = None,
        negative_prompt: Prompts = None,
        class_labels: Labels = None,
        options: SamplingOptions | None = None,
        batch_size: int = 64,
        progress: bool = False,
        trajectory: list[Tensor] | None = None,
        callback: StepCallback | None = None,
        low_res: Tensor | None = None,
        aug_level: float | None = None,
        image_embeds: Tensor | None = None,
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        """`num` images `[N, C, H, W]` in [-1, 1] (CPU, float32) and one metadata dict per image.

        `prompts` / `negative_prompt` (text models): one string for all or one per image (None: "").
        `class_labels` (class models): one label (index or name) for all, one per image, or None (classes
        in equal contiguous blocks). Image i uses `torch.Generator().manual_seed(seed + i)`. A cold-diffusion
        model starts from its channel-means prior (`pipelines/cold.py`). `trajectory`: a list that receives
        the states x_T … x_0 of all `num` images, `[N, C, H, W]` each (see `ddpm.sample`); `callback(step,
        steps, x0_hat)` after each sampler step of each batch (raising from it stops the call). An SR model
        takes `low_res` `[num, C, s, s]` and `aug_level` (see `upscale`); an unCLIP decoder `image_embeds`
        `[num, E]` (scaled, as `encode_images` gives them; the null embedding is zeros).
        """
        from .. import sample

        _positive(num, "num")
        _positive(batch_size, "batch_size")
        level = self._aug_level(aug_level)
        if self.low_res is not None:
            if low_res is None:
                raise ValueError("this is a super-resolution model: it upscales low-res images (upscale(), "
                                 "`ddpm upscale`, or a stage of a Cascade) rather than generating from noise")
            low_res = self.check_low_res(low_res)
            if len(low_res) != num:
                raise ValueError(f"got {len(low_res)} low-res images for {num} outputs; give one per image")
        elif low_res is not None:
            self.check_low_res(low_res)  # the error: not an SR model
        embeds = self._check_embeds(num, image_embeds)
        o = self.resolve(options)
        texts, negatives = self._texts(num, prompts, negative_prompt)
        labels = self._labels(num, class_labels)
        guided = o.guidance_scale != 1.0
        if self.condition == "text":  # tokenise once up front, so warnings come once per call
            self.conditioner.check_prompts(sorted(set(texts) | (set(negatives) if guided else set())))
        prediction = self.meta.diffusion.prediction
        c, size = int(self.unet.config.in_channels), self.image_size
        clip_x0 = None if o.clip_x0 == "none" else o.clip_x0
        images, paths = [], []
        for start in range(0, num, batch_size):
            stop = min(num, start + batch_size)
            gens = [torch.Generator().manual_seed(o.seed + i) for i in range(start, stop)]
            y = None if labels is None else labels[start:stop]
            cond, uncond = self._conditions(y, texts[start:stop], negatives[start:stop], guided)
            if self.cold is None:  # (a cold model draws its start from the same generators)
                noise = torch.stack([torch.randn(c, size, size, generator=g) for g in gens]).to(self.device)
            if low_res is not None:  # the aug noise comes from image i's generator, after its start noise
                extra = self._low_res_input(low_res[start:stop], level, gens)
                cond = {**(cond or {}), **extra}
                uncond = {**uncond, **extra} if uncond is not None else None
            if embeds is not None:
                z = embeds[start:stop].to(self.device)
                cond = {"image_embed": z}
                uncond = {"image_embed": torch.zeros_like(z)} if guided else None
            path: list[Tensor] | None = [] if trajectory is not None else None
            common = dict(sampler=o.sampler, steps=o.steps, spacing=o.spacing,
                          guidance_scale=o.guidance_scale, cond=cond, uncond=uncond, clip_x0=clip_x0,
                          progress=progress, trajectory=path, callback=callback)  # fmt: skip
            if self.cold is not None:
                if o.karras or o.exponential or o.eta:
                    raise ValueError("karras, exponential and eta apply to Gaussian samplers; cold sampling "
                                     "has none of them")  # fmt: skip
                shape = (stop - start, c, size, size)
                x0 = generate_batch(self.unet, self.cold, shape, gens, device=self.device,
                                    sample_options=common)
            else:
                x0 = sample(self.unet, noise, schedule=self.schedule, karras=o.karras,
                            exponential=o.exponential, prediction=prediction,
                            eta=o.eta, generator=gens, **common)
            images.append(x0.float().clamp(-1, 1).cpu())
            if path is not None:
                paths.append(torch.stack(path).float().cpu())  # [states, B, C, H, W]
        if trajectory is not None:
            trajectory.extend(torch.cat(paths, dim=1).unbind(0))
        metas = self._metadata(num, o, texts, negatives, labels)
        if self.low_res is not None:
            for m in metas:
                m.update(aug_level=level, low_res_size=self.low_res.size)
        return torch.cat(images), metas

    def _low_res_input(self, low: Tensor, level: float, gens: list[torch.Generator]) -> dict[str, Tensor]:
        """The UNet keywords of a batch of low-res images: z augmented to `level`, and the level `[B]`."""
        lr = self.low_res
        eps = torch.stack([torch.randn(low.shape[1], lr.size, lr.size, generator=g) for g in gens])
        a = torch.full((len(low),), float(level))
        z = augment(low.double(), a, eps.double(), self.schedule).float()
        return {"low_res": z.to(self.device), "aug_level": a.to(self.device)}

    @torch.no_grad()
    def restore(
        self,
        images: Tensor,
        *,
        level: int | None = None,
        seeds: Sequence[int] | None = None,
        options: SamplingOptions | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> Tensor:
        """Restore images `[N, C, H, W]` in [-1, 1] degraded to `level` (default T) by a cold model's own
        degradation; image i's random parts (a random mask centre) come from a generator seeded `seeds[i]`
        (default i), the seed `ddpm data degrade` drew them with. Unconditional cold models only."""
        if self.cold is None:
            raise ValueError("restore needs a cold-diffusion model (trained with [diffusion] degradation = "
                             "…); this one removes Gaussian noise")  # fmt: skip
        if self.condition != "none":
            raise ValueError(f"restore takes unconditional cold models; this one is {self._kind}")
        _positive(batch_size, "batch_size")
        levels = self.cold.degradation.levels
        level = levels if level is None else int(level)
        if not 0 <= level <= levels:
            raise ValueError(f"level {level} is outside 0 … {levels}, the levels of this model's degradation")
        if level == 0:  # the clean image: nothing to restore
            return images.float().clamp(-1, 1)
        o = self.resolve(options)
        steps = options.steps if options is not None and options.steps else level  # default: every level
        seeds = list(range(len(images))) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(images):
            raise ValueError(f"got {len(seeds)} seeds for {len(images)} images; give one per image")
        common = dict(sampler=o.sampler, steps=cold_steps(o.sampler, steps, level), spacing=o.spacing,
                      clip_x0=None if o.clip_x0 == "none" else o.clip_x0, progress=progress)  # fmt: skip
        out = []
        for first in range(0, len(images), batch_size):
            x_t = images[first : first + batch_size].to(self.device, torch.float32)
            gens = [torch.Generator().manual_seed(s) for s in seeds[first : first + batch_size]]
            out.append(restore_batch(self.unet, self.cold, x_t, level, gens, sample_options=common).cpu())
        return torch.cat(out).clamp(-1, 1)

    def _metadata(
        self, num: int, o: SamplingOptions, texts: list[str], negatives: list[str], labels: Tensor | None
    ) -> list[dict[str, Any]]:
        out = image_metadata(
            o, num, prompt="", negative_prompt="", clip_x0=None if o.clip_x0 == "none" else o.clip_x0,
            prediction=self.meta.diffusion.prediction, width=self.image_size, height=self.image_size,
            model_hash=self.model_hash, model=self.name,
        )  # fmt: skip
        for i, m in enumerate(out):
            m.update(prompt=texts[i], negative_prompt=negatives[i])
            if labels is not None:
                k = int(labels[i])
                name = self.class_names[k] if self.class_names else str(k)
                prompt = f"class {k}" + (f" ({name})" if name != str(k) else "")
                m.update(class_label=k, class_name=name, prompt=prompt)
        return out
