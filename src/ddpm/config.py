"""Run configuration: nested dataclasses loaded from TOML, unknown keys rejected, dotted overrides.

A config file has the sections below; every key is optional and defaults to the value shown by
`ddpm.config.dump_config(Config())`.

    [run]        name, dir, task                 -> the run folder dir/name; task "diffusion" or "autoencoder"
    [data]       dataset, image_size, channels, flip, condition, cond_drop_prob, num_workers
    [model]      the fields of `ddpm.models.UNetConfig`
    [diffusion]  schedule, num_timesteps, beta_start, beta_end, zero_terminal_snr, prediction,
                 learned_variance, min_snr_gamma, vlb_weight, timestep_sampling, timestep_loc,
                 timestep_scale
    [train]      steps, batch_size, lr, …           (see `TrainConfig`)
    [sample]     sampler, steps, guidance_scale, num (the preview grid written while training)
    [text]       text-conditioning settings (see `TextConfig`)
    [autoencoder] the KL autoencoder trained when run.task = "autoencoder" (see `AutoencoderTrainConfig`)

TOML has no null: an optional key that is absent takes its default; write the string "none" to set an
optional key to None explicitly (e.g. `--set diffusion.min_snr_gamma=none`).

`model.in_channels`, `out_channels`, `num_classes` and `learned_variance` follow from [data] and
[diffusion]; training fills them in (see `ddpm.training.resolve_unet_config`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from .models.autoencoder import AutoencoderKLConfig
from .models.unet import UNetConfig

__all__ = [
    "Config",
    "RunConfig",
    "DataConfig",
    "DiffusionConfig",
    "TrainConfig",
    "SampleConfig",
    "TextConfig",
    "AutoencoderTrainConfig",
    "TASKS",
    "load_config",
    "dump_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "parse_override",
]

CONDITIONS = ("none", "class", "text")
PREDICTIONS = ("eps", "x0", "v")
SCHEDULE_NAMES = ("linear", "cosine", "scaled_linear", "sigmoid")
MIXED_PRECISION = ("auto", "no", "bf16")
LR_SCHEDULES = ("constant", "cosine")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")  # ddpm.objectives.TIMESTEP_SAMPLING, without importing torch
TASKS = ("diffusion", "autoencoder")
RECONSTRUCTIONS = ("l2", "l1")


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _choice(section: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    _need(value in choices, f"{section}.{key} must be one of {list(choices)}; got {value!r}")


@dataclass
class RunConfig:
    """Where the run lives: `dir/name/`, and what it trains: "diffusion" (a UNet, [model] and [diffusion])
    or "autoencoder" (a KL autoencoder, [autoencoder]; see `ddpm.training.autoencoder`)."""

    name: str = "run"
    dir: str = "runs"
    task: str = "diffusion"

    def __post_init__(self) -> None:
        _need(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
              f"run.name must be a plain folder name (no '/'); got {self.name!r}")
        _choice("run", "task", self.task, TASKS)


@dataclass
class DataConfig:
    """The training images: a built-in name ("digits", "faces", "shapes") or an image folder.

    `image_size` / `channels` None keep the dataset's own. `flip`: random horizontal flips, decided by the
    training generator so a resumed run sees the same ones. `condition`: "none", "class" (labels, with
    `cond_drop_prob` of them replaced by the null class for classifier-free guidance) or "text" (captions).
    `num_workers`: DataLoader workers for datasets that are not held in memory. `options`: keywords for the
    dataset itself, e.g. `{num = 40000, pair_fraction = 0.9}` for `shapes` or `{labels = "folders"}` for
    a folder; a key the dataset does not take is an error that lists the ones it does.
    """

    dataset: str = "digits"
    image_size: int | None = None
    channels: int | None = None
    flip: bool = False
    condition: str = "none"
    cond_drop_prob: float = 0.1
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _need(bool(self.dataset), "data.dataset must name a built-in dataset or an image folder")
        _need(self.image_size is None or self.image_size >= 1,
              f"data.image_size must be positive; got {self.image_size}")
        _need(self.channels in (None, 1, 3), f"data.channels must be 1 or 3; got {self.channels}")
        _choice("data", "condition", self.condition, CONDITIONS)
        _need(0.0 <= self.cond_drop_prob < 1.0,
              f"data.cond_drop_prob must lie in [0, 1); got {self.cond_drop_prob}")
        _need(self.num_workers >= 0, f"data.num_workers must be >= 0; got {self.num_workers}")
        from .data.registry import LOAD_KEYWORDS  # the run decides these itself

        reserved = sorted(set(self.options) & LOAD_KEYWORDS)
        _need(not reserved, f"data.options cannot set {', '.join(reserved)}: use the [data] / [train] key of "
              "that name instead")


@dataclass
class DiffusionConfig:
    """The noise schedule and what the network predicts (see `ddpm.schedules`, `ddpm.objectives`).

    `beta_start` / `beta_end` None keep the schedule's defaults. `min_snr_gamma` enables min-SNR-gamma
    loss weighting (Hang et al. 2023); `vlb_weight` is lambda of the hybrid loss with learned variances.
    `timestep_sampling`: "uniform" (DDPM) or "logit_normal" with `timestep_loc` / `timestep_scale` (the
    normal's mean and spread in logit(t/T) space; loc > 0 favours the noisy end). Non-uniform timesteps
    reweight every term of the loss, the L_vlb of learned variances included.
    """

    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float | None = None
    beta_end: float | None = None
    zero_terminal_snr: bool = False
    prediction: str = "eps"
    learned_variance: bool = False
    min_snr_gamma: float | None = None
    vlb_weight: float = 0.001
    timestep_sampling: str = "uniform"
    timestep_loc: float = 0.0
    timestep_scale: float = 1.0

    def __post_init__(self) -> None:
        _choice("diffusion", "schedule", self.schedule, SCHEDULE_NAMES)
        _choice("diffusion", "prediction", self.prediction, PREDICTIONS)
        _need(self.num_timesteps >= 2, f"diffusion.num_timesteps must be >= 2; got {self.num_timesteps}")
        _need(self.min_snr_gamma is None or self.min_snr_gamma > 0,
              f"diffusion.min_snr_gamma must be positive or none; got {self.min_snr_gamma}")
        _need(self.vlb_weight >= 0, f"diffusion.vlb_weight must be >= 0; got {self.vlb_weight}")
        _choice("diffusion", "timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS)
        _need(self.timestep_scale > 0,
              f"diffusion.timestep_scale must be positive; got {self.timestep_scale}")
        if (self.beta_start is not None or self.beta_end is not None) and self.schedule == "cosine":
            raise ValueError("diffusion.beta_start/beta_end do not apply to the cosine schedule; remove them")

    def build_schedule(self) -> Any:
        """The `DiscreteSchedule` this section describes."""
        from .schedules import SCHEDULES

        kw: dict[str, Any] = {"zero_terminal_snr": self.zero_terminal_snr}
        if self.beta_start is not None:
            kw["beta_start"] = self.beta_start
        if self.beta_end is not None:
            kw["beta_end"] = self.beta_end
        return SCHEDULES[self.schedule](self.num_timesteps, **kw)


@dataclass
class TrainConfig:
    """The optimisation. `batch_size` is the GLOBAL batch of one optimizer step: it is split over the DDP
    processes and the `grad_accum` micro-batches, so changing either keeps the maths the same.

    AdamW with `lr` and `adam_betas` after a linear warmup of `warmup_steps`, then `lr_schedule`
    ("constant" or "cosine" to zero at `steps`). `grad_clip` <= 0 disables clipping. EMA of the weights
    with `ema_decay`; with `ema_warmup` the decay is min(ema_decay, (1 + step) / (10 + step)) so short runs
    are not dominated by the initial weights. `device` "auto" picks CUDA when present; `mixed_precision`
    "auto" means bf16 autocast on CUDA and float32 on CPU. `num_threads` 0 keeps torch's default. Cadences
    are in steps (0 disables that output); `max_nonfinite` consecutive non-finite steps stop the run.
    """

    steps: int = 10000
    batch_size: int = 64
    lr: float = 2e-4
    lr_schedule: str = "constant"
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    grad_accum: int = 1
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"
    num_threads: int = 0
    compile: bool = False
    checkpoint_every: int = 1000
    keep_last: int = 3
    sample_every: int = 1000
    log_every: int = 50
    max_nonfinite: int = 10

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "grad_accum", "keep_last", "max_nonfinite"):
            _need(getattr(self, key) >= 1, f"train.{key} must be >= 1; got {getattr(self, key)}")
        for key in ("warmup_steps", "num_threads", "checkpoint_every", "sample_every", "log_every", "seed"):
            _need(getattr(self, key) >= 0, f"train.{key} must be >= 0; got {getattr(self, key)}")
        _need(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be a positive number; got {self.lr}")
        _need(len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas),
              f"train.adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; "
              f"got {list(self.adam_betas)}")
        _need(self.weight_decay >= 0, f"train.weight_decay must be >= 0; got {self.weight_decay}")
        _need(0.0 <= self.ema_decay < 1.0, f"train.ema_decay must lie in [0, 1); got {self.ema_decay}")
        _need(self.batch_size % self.grad_accum == 0,
              f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum "
              f"({self.grad_accum})")
        _choice("train", "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("train", "lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
              f"train.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {self.device!r}")


@dataclass
class SampleConfig:
    """Sampling defaults: the preview grid written while training, and the defaults stored in model files."""

    sampler: str = "dpmpp_2m"
    steps: int = 20
    guidance_scale: float = 1.0
    num: int = 16

    def __post_init__(self) -> None:
        _need(self.steps >= 1, f"sample.steps must be >= 1; got {self.steps}")
        _need(self.num >= 1, f"sample.num must be >= 1; got {self.num}")
        from .sampling import SAMPLERS

        _choice("sample", "sampler", self.sampler, tuple(SAMPLERS))
        _need(self.guidance_scale >= 0, f"sample.guidance_scale must be >= 0; got {self.guidance_scale}")


@dataclass
class TextConfig:
    """Text conditioning (data.condition = "text"): the text encoder trained with the UNet.

    `context_length` tokens per caption; the encoder's `width` (= the UNet's context_dim), `layers`, `heads`
    and `mlp_ratio`; `causal` attention (each word sees the words before it, as in CLIP) instead of
    bidirectional. None (absent) takes the text conditioner's default (`ddpm.conditioning.text`).
    """

    context_length: int | None = None
    width: int | None = None
    layers: int | None = None
    heads: int | None = None
    mlp_ratio: int | None = None
    causal: bool | None = None

    def __post_init__(self) -> None:
        for key in ("context_length", "width", "layers", "heads", "mlp_ratio"):
            value = getattr(self, key)
            _need(value is None or value >= 1, f"text.{key} must be a positive integer; got {value}")


@dataclass
class AutoencoderTrainConfig:
    """The KL autoencoder of run.task = "autoencoder": the architecture fields of
    `ddpm.models.AutoencoderKLConfig` (defaults: its `small()` preset, f = 4) and the objective
    L_rec + kl_weight * KL of `ddpm.models.autoencoder_train.vae_loss` (LDM, Rombach et al. 2022, App. G).
    The latent scaling factor is not set here: `ddpm export` estimates it from the training images."""

    latent_channels: int = 4
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    norm_groups: int = 8
    mid_attention: bool = True
    kl_weight: float = 1e-6
    reconstruction: str = "l2"

    def __post_init__(self) -> None:
        _need(self.kl_weight >= 0 and math.isfinite(self.kl_weight),
              f"autoencoder.kl_weight must be a number >= 0; got {self.kl_weight}")
        _choice("autoencoder", "reconstruction", self.reconstruction, RECONSTRUCTIONS)
        self.build()  # architecture errors name the field now, not when training starts

    def build(self, *, channels: int = 3, scaling_factor: float = 1.0) -> AutoencoderKLConfig:
        """The `AutoencoderKLConfig` these fields describe (SD structure otherwise)."""
        arch = {k: getattr(self, k) for k in ("latent_channels", "base_channels", "channel_mult",
                                              "num_res_blocks", "norm_groups", "mid_attention")}
        return AutoencoderKLConfig(in_channels=channels, out_channels=channels, scaling_factor=scaling_factor,
                                   **arch)


@dataclass
class Config:
    """A whole run: the sections of a config file (see the module docstring)."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    text: TextConfig = field(default_factory=TextConfig)
    autoencoder: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)


# --------------------------------------------------------------------------------------------
# dict <-> dataclass, with type checks that name the key
# --------------------------------------------------------------------------------------------

_NONE = "none"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple, "none" -> None) a TOML value for `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() == _NONE)):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ValueError as e:
                errors.append(str(e))
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ValueError(f"{key} must be {names} (or \"none\"); got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        _need(value in choices, f"{key} must be one of {list(choices)}; got {value!r}")
        return value
    if origin in (tuple, list):
        _need(isinstance(value, (list, tuple)), f"{key} must be a list; got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        _need(isinstance(value, dict), f"{key} must be a table; got {value!r}")
        return dict(value)
    if tp is bool:
        _need(isinstance(value, bool), f"{key} must be true or false; got {value!r}")
        return value
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _need(ok, f"{key} must be an integer; got {value!r}")
        return value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _need(ok, f"{key} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        _need(isinstance(value, str), f"{key} must be a string; got {value!r}")
        return value
    return value


def _section_from_dict(cls: type, values: Any, section: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"[{section}] must be a table of keys; got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in values if k not in fields]
    if unknown:
        valid = ", ".join(fields) if fields else "(none)"
        raise ValueError(
            f"unknown key {section}.{unknown[0]} in the config; valid keys of [{section}]: {valid}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"[{section}]: {e}") from e


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a `Config` from nested dicts (as TOML parses them); unknown sections/keys are errors."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = [k for k in data if k not in sections]
    if unknown:
        raise ValueError(f"unknown config section [{unknown[0]}]; valid sections: {', '.join(sections)}")
    hints = typing.get_type_hints(Config)
    return Config(**{name: _section_from_dict(hints[name], data.get(name, {}), name) for name in sections})


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The config as nested plain dicts (None kept as None, tuples as lists)."""
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        names = [s.name for s in dataclasses.fields(section) if s.init]
        out[f.name] = {name: _plain(getattr(section, name)) for name in names}
    return out


# --------------------------------------------------------------------------------------------
# TOML in and out
# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=1e-4"` -> (["train", "lr"], 1e-4); the value is a TOML literal, else a plain string."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    if len(path) != 2 or not all(path):
        raise ValueError(f"override key {key.strip()!r} must be section.key, e.g. train.lr")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `--set section.key=value` overrides to nested dicts (a copy); checking happens when building."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"cannot set {section}.{key}: [{section}] is not a table")
        table[key] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config (or start from defaults when `path` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from e
    return config_from_dict(apply_overrides(data, list(overrides)))


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters (incl. DEL) escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_string(str(k))} = {_toml_value(v, key)}" for k, v in value.items())
        return "{" + items + "}"
    raise ValueError(f"cannot write {key} = {value!r} as TOML")


def dump_config(config: Config) -> str:
    """The config as TOML text that `load_config` reads back to an equal `Config`."""
    lines: list[str] = []
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        lines.append(f"[{f.name}]")
        for s in dataclasses.fields(section):
            if not s.init:
                continue
            value = getattr(section, s.name)
            default = s.default if s.default is not dataclasses.MISSING else None
            if value is None:
                # absent = default; an explicit "none" only where the default is something else
                lines.append(f"# {s.name} = (none)" if default is None else f'{s.name} = "{_NONE}"')
            else:
                lines.append(f"{s.name} = {_toml_value(value, f'{f.name}.{s.name}')}")
        lines.append("")
    return "\n".join(lines)
