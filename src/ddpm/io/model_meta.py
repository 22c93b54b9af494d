"""The "ddpm" metadata of a model file, typed: what a run writes and what a pipeline reads.

    {"format": "ddpm.model", "version": 1,
     "unet": UNetConfig.to_dict(),                      a diffusion model, or
     "autoencoder": AutoencoderKLConfig.to_dict(),      a KL autoencoder, or
     "contrastive": {"model": ContrastiveConfig.to_dict(), "tokenizer": WordTokenizer.to_dict()},
                                                        CLIP-style encoders (run.task = "contrastive")
     "diffusion": {"schedule", "prediction", "learned_variance", "degradation", "start"},
     "data": {"dataset", "image_size", "channels", "class_names", "options", "seed"},
     "conditioning": {"type", "num_classes", "text_encoder"},
     "sampling": {"sampler", "steps", "guidance_scale", "clip_x0"},
     "training": {"step", "run", "task", "kl_weight", "reconstruction"}}

`ModelMeta.from_dict` checks a file's dict once, on load: a missing section or field, an unknown one, or a
value of the wrong kind is a ValueError that names it, instead of a KeyError deep inside a pipeline.
`to_dict` writes back exactly the sections a file had, so files round-trip unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config.choices import CONDITIONS, DEGRADATION_NAMES, PREDICTIONS, SAMPLER_NAMES

__all__ = [
    "FORMAT",
    "VERSION",
    "ModelMeta",
    "DiffusionMeta",
    "DataMeta",
    "ConditioningMeta",
    "SamplingMeta",
    "TrainingMeta",
]

FORMAT = "ddpm.model"
VERSION = 1
CLIP_X0 = ("static", "dynamic", None)


def _fail(where: str, message: str) -> ValueError:
    where = f" {where.strip()}" if where.strip() else ""
    return ValueError(f"model metadata{where}: {message}; the file may be damaged or written by another tool")


def _section(cls: type, d: Any, where: str) -> Any:
    """`cls(**d)` with the missing / unknown fields of `d` named."""
    if not isinstance(d, dict):
        raise _fail(where, f"must be a JSON object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise _fail(where, f"unknown field(s) {unknown} (known: {sorted(fields)})")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    missing = [n for n in required if n not in d]
    if missing:
        raise _fail(where, f"lacks the field(s) {missing}")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise _fail(where, str(e)) from e


def _kind(value: Any, types: tuple[type, ...], name: str, optional: bool = False) -> None:
    """Raise unless `value` is one of `types` (a bool counts only where bool is named) or an allowed None."""
    if value is None and optional:
        return
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ValueError(f"{name} = {value!r} is not a {' or '.join(t.__name__ for t in types)}")


@dataclass(frozen=True)
class DiffusionMeta:
    """The process the UNet was trained for: its schedule (`ddpm.schedules.from_config`) and output; for a
    cold-diffusion model, the degradation it restores (`{"name", **options}`, `ddpm.degradations`) and
    where generation starts (`ddpm.degradations.ChannelMeans.to_dict()`)."""

    schedule: dict[str, Any]
    prediction: str = "eps"
    learned_variance: bool = False
    degradation: dict[str, Any] | None = None
    start: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _kind(self.schedule, (dict,), "schedule")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction {self.prediction!r} is not one of {list(PREDICTIONS)}")
        _kind(self.learned_variance, (bool,), "learned_variance")
        _kind(self.degradation, (dict,), "degradation", optional=True)
        _kind(self.start, (dict,), "start", optional=True)
        if self.degradation is not None and self.degradation.get("name") not in DEGRADATION_NAMES:
            name = self.degradation.get("name")
            raise ValueError(f"degradation {name!r} is not one of {list(DEGRADATION_NAMES)}")

    @property
    def cold(self) -> bool:
        """Whether the model restores a degradation (cold diffusion) rather than removing Gaussian noise."""
        return self.degradation is not None


@dataclass(frozen=True)
class DataMeta:
    """The images the model was trained on: name, size, channels, class names and dataset options."""

    dataset: str = ""
    image_size: int | None = None
    channels: int | None = None
    class_names: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        _kind(self.image_size, (int,), "image_size", optional=True)
        _kind(self.channels, (int,), "channels", optional=True)
        _kind(self.class_names, (list,), "class_names", optional=True)


@dataclass(frozen=True)
class ConditioningMeta:
    """What the model is conditioned on: "none", "class" (with `num_classes`) or "text" (`text_encoder`:
    the description `ddpm.conditioning.text_conditioner_from_meta` rebuilds the encoder from)."""

    type: str = "none"
    num_classes: int | None = None
    text_encoder: dict[str, Any] | None = None
    image_encoder: dict[str, Any] | None = None  # "clip_image": the frozen contrastive model's path, hash

    def __post_init__(self) -> None:
        if self.type not in CONDITIONS:
            raise ValueError(f"type {self.type!r} is not one of {list(CONDITIONS)}")
        if self.type == "class" and not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise ValueError(f"a class-conditional model needs num_classes >= 1, got {self.num_classes!r}")
        if self.type == "text" and not isinstance(self.text_encoder, dict):
            raise ValueError("a text-conditional model needs its text_encoder description")
        if self.type == "clip_image" and not (isinstance(self.image_encoder, dict)
                                              and "path" in self.image_encoder):
            raise ValueError("an unCLIP decoder (clip_image) needs its image_encoder entry with the path of "
                             "its contrastive model")


@dataclass(frozen=True)
class SamplingMeta:
    """The sampling defaults the run chose (`[sample]`), used where a call leaves an option unset."""

    sampler: str = "dpmpp_2m"
    steps: int = 20
    guidance_scale: float = 1.0
    clip_x0: str | None = "static"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"sampler {self.sampler!r} is not one of {list(SAMPLER_NAMES)}")
        _kind(self.steps, (int,), "steps")
        _kind(self.guidance_scale, (int, float), "guidance_scale")
        if self.clip_x0 not in CLIP_X0:
            raise ValueError(f"clip_x0 {self.clip_x0!r} is not one of {list(CLIP_X0)}")


@dataclass(frozen=True)
class TrainingMeta:
    """Where the weights come from: the run's name and step (and an autoencoder's objective)."""

    step: int = 0
    run: str | None = None
    task: str | None = None
    kl_weight: float | None = None
    reconstruction: str | None = None


_SECTIONS = {"diffusion": DiffusionMeta, "data": DataMeta, "conditioning": ConditioningMeta,
             "sampling": SamplingMeta, "training": TrainingMeta}
_MODELS = ("unet", "autoencoder", "contrastive", "prior")  # exactly one: what the file's weights are
_EXTRA = ("scaling_factor_estimated_on",)  # free-text notes a file may carry
_COLD_FIELDS = {("diffusion", "degradation"), ("diffusion", "start")}


@dataclass(frozen=True)
class ModelMeta:
    """A model file's metadata: a diffusion model (`unet` set), an autoencoder (`autoencoder` set) or
    contrastive encoders (`contrastive` set)."""

    unet: dict[str, Any] | None = None
    autoencoder: dict[str, Any] | None = None
    contrastive: dict[str, Any] | None = None
    prior: dict[str, Any] | None = None  # an unCLIP prior: its config and the encoder it was trained on
    diffusion: DiffusionMeta | None = None
    data: DataMeta = field(default_factory=DataMeta)
    conditioning: ConditioningMeta = field(default_factory=ConditioningMeta)
    sampling: SamplingMeta = field(default_factory=SamplingMeta)
    training: TrainingMeta = field(default_factory=TrainingMeta)
    notes: dict[str, str] = field(default_factory=dict)
    # The fields each section of the file had, so `to_dict` writes back what was read (and what was set).
    given: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, d: Any, *, source: str = "") -> ModelMeta:
        """Check and type a file's "ddpm" dict; errors name `source`, the section and the field."""
        where = f"of {source}" if source else ""
        if not isinstance(d, dict):
            raise _fail(where, "is not a JSON object")
        if d.get("format", FORMAT) != FORMAT:
            raise _fail(where, f"has format {d.get('format')!r}, not {FORMAT!r}")
        version = d.get("version", VERSION)
        if not isinstance(version, int) or version > VERSION:
            raise ValueError(f"{source or 'this file'} is a version {version!r} model file; this ddpm reads "
                             f"up to version {VERSION}. Upgrade ddpm to load it")
        known = {"format", "version", *_MODELS, *_SECTIONS, *_EXTRA}
        unknown = sorted(set(d) - known)
        if unknown:
            raise _fail(where, f"has unknown section(s) {unknown} (known: {sorted(known)})")
        if sum(name in d for name in _MODELS) != 1:
            raise _fail(where, "must hold exactly one of the sections 'unet' (a diffusion model), "
                        "'autoencoder', 'contrastive' and 'prior'")
        if ("unet" in d or "prior" in d) and "diffusion" not in d:
            raise _fail(where, "lacks the 'diffusion' section a diffusion model needs")
        for name in _MODELS:
            if name in d and not isinstance(d[name], dict):
                raise _fail(f"{where} section {name!r}", "must be a JSON object")
        if "contrastive" in d and not {"model", "tokenizer"} <= set(d["contrastive"]):
            raise _fail(f"{where} section 'contrastive'", "lacks its 'model' or 'tokenizer' entry")
        sections = {name: _section(t, d[name], f"{where} section {name!r}".strip())
                    for name, t in _SECTIONS.items() if name in d}
        return cls(unet=d.get("unet"), autoencoder=d.get("autoencoder"), contrastive=d.get("contrastive"),
                   prior=d.get("prior"),
                   notes={k: d[k] for k in _EXTRA if k in d},
                   given={name: tuple(d[name]) for name in sections}, **sections)

    def to_dict(self) -> dict[str, Any]:
        """The JSON dict a model file stores (the inverse of `from_dict`)."""
        out: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        for name in _MODELS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name, fields in self.given.items():
            out[name] = {k: getattr(getattr(self, name), k) for k in fields}
        out.update(self.notes)
        return out

    # -------------------------------------------------------------------------------------- questions
    @property
    def kind(self) -> str:
        """"diffusion", "autoencoder", "contrastive" or "prior" (an unCLIP prior)."""
        if self.contrastive is not None:
            return "contrastive"
        if self.prior is not None:
            return "prior"
        return "autoencoder" if self.autoencoder is not None else "diffusion"

    @property
    def condition(self) -> str:
        """"none", "class" or "text"."""
        return self.conditioning.type

    @property
    def class_names(self) -> list[str] | None:
        """The class names of a class-conditional model ("0" … "K-1" when the data had none)."""
        k = self.conditioning.num_classes
        if self.condition != "class" or k is None:
            return None
        return list(self.data.class_names) if self.data.class_names else [str(i) for i in range(k)]

    def with_sections(self, **sections: Any) -> ModelMeta:
        """A copy with whole sections set (every field of each is written by `to_dict`, except the
        cold-diffusion fields of a Gaussian model, which stay out of its file)."""
        written = {n: tuple(f.name for f in dataclasses.fields(v)
                            if not ((n, f.name) in _COLD_FIELDS and getattr(v, f.name) is None))
                   for n, v in sections.items()}  # fmt: skip
        given = {**self.given, **written}
        return dataclasses.replace(self, given=given, **sections)
