"""The sections of a run config (see `ddpm.config` for the file format)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from .architectures import AutoencoderKLConfig, UNetConfig
from .base import choice, need
from .choices import (
    COLD_SAMPLER_NAMES,
    CONDITIONS,
    DEGRADATION_NAMES,
    HARD_NEGATIVES,
    LOAD_KEYWORDS,
    LR_SCHEDULES,
    MIXED_PRECISION,
    PREDICTIONS,
    RECONSTRUCTIONS,
    SAMPLER_NAMES,
    SCHEDULE_NAMES,
    TASKS,
    TIMESTEP_SAMPLINGS,
)

__all__ = [
    "Config",
    "RunConfig",
    "DataConfig",
    "DiffusionConfig",
    "TrainConfig",
    "SampleConfig",
    "TextConfig",
    "AutoencoderTrainConfig",
    "ContrastiveTrainConfig",
    "UnclipConfig",
]


@dataclass
class RunConfig:
    """Where the run lives: `dir/name/`, and what it trains: "diffusion" (a UNet, [model] and [diffusion])
    or "autoencoder" (a KL autoencoder, [autoencoder]; see `ddpm.training.tasks.autoencoder`) or
    "contrastive" (CLIP-style image and text encoders, [contrastive] and [text]; see
    `ddpm.training.tasks.contrastive`)."""

    name: str = "run"
    dir: str = "runs"
    task: str = "diffusion"

    def __post_init__(self) -> None:
        need(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
              f"run.name must be a plain folder name (no '/'); got {self.name!r}")
        choice("run", "task", self.task, TASKS)


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
        need(bool(self.dataset), "data.dataset must name a built-in dataset or an image folder")
        need(self.image_size is None or self.image_size >= 1,
              f"data.image_size must be positive; got {self.image_size}")
        need(self.channels in (None, 1, 3), f"data.channels must be 1 or 3; got {self.channels}")
        choice("data", "condition", self.condition, CONDITIONS)
        need(0.0 <= self.cond_drop_prob < 1.0,
              f"data.cond_drop_prob must lie in [0, 1); got {self.cond_drop_prob}")
        need(self.num_workers >= 0, f"data.num_workers must be >= 0; got {self.num_workers}")
        reserved = sorted(set(self.options) & LOAD_KEYWORDS)
        need(not reserved, f"data.options cannot set {', '.join(reserved)}: use the [data] / [train] key of "
              "that name instead")


@dataclass
class DiffusionConfig:
    """The noise schedule and what the network predicts (see `ddpm.schedules`, `ddpm.objectives`).

    `beta_start` / `beta_end` None keep the schedule's defaults. `min_snr_gamma` enables min-SNR-gamma
    loss weighting (Hang et al. 2023); `vlb_weight` is lambda of the hybrid loss with learned variances.
    `timestep_sampling`: "uniform" (DDPM) or "logit_normal" with `timestep_loc` / `timestep_scale` (the
    normal's mean and spread in logit(t/T) space; loc > 0 favours the noisy end). Non-uniform timesteps
    reweight every term of the loss, the L_vlb of learned variances included.

    `degradation` makes the run cold diffusion (Bansal et al. 2022): a name of `ddpm.degradations` ("blur",
    "mask", "downsample", "fade", "gaussian") with its keywords in `degradation_options` (e.g.
    `{levels = 40, sigma = 7.0}`; "gaussian" takes this section's schedule unless the options give one).
    The network then restores x0 from D(x0, t), t ~ U{1..T}, under `restoration_loss` ("l1", the paper's,
    or "l2"); generation starts from the training images' channel means plus `start_noise`.
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
    degradation: str | None = None
    degradation_options: dict[str, Any] = field(default_factory=dict)
    restoration_loss: str = "l1"
    start_noise: float = 0.02

    def __post_init__(self) -> None:
        self._check_cold()
        choice("diffusion", "schedule", self.schedule, SCHEDULE_NAMES)
        choice("diffusion", "prediction", self.prediction, PREDICTIONS)
        need(self.num_timesteps >= 2, f"diffusion.num_timesteps must be >= 2; got {self.num_timesteps}")
        need(self.min_snr_gamma is None or self.min_snr_gamma > 0,
              f"diffusion.min_snr_gamma must be positive or none; got {self.min_snr_gamma}")
        need(self.vlb_weight >= 0, f"diffusion.vlb_weight must be >= 0; got {self.vlb_weight}")
        choice("diffusion", "timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS)
        need(self.timestep_scale > 0,
              f"diffusion.timestep_scale must be positive; got {self.timestep_scale}")
        if (self.beta_start is not None or self.beta_end is not None) and self.schedule == "cosine":
            raise ValueError("diffusion.beta_start/beta_end do not apply to the cosine schedule; remove them")

    def _check_cold(self) -> None:
        choice("diffusion", "restoration_loss", self.restoration_loss, RECONSTRUCTIONS)
        need(self.start_noise >= 0, f"diffusion.start_noise must be >= 0; got {self.start_noise}")
        if self.degradation is None:
            need(not self.degradation_options,
                 "diffusion.degradation_options needs diffusion.degradation, the degradation they configure")
            return
        choice("diffusion", "degradation", self.degradation, DEGRADATION_NAMES)
        for key, ok in (("prediction", self.prediction in ("eps", "x0")), ("learned_variance",
                        not self.learned_variance), ("min_snr_gamma", self.min_snr_gamma is None),
                        ("timestep_sampling", self.timestep_sampling == "uniform")):  # fmt: skip
            need(ok, f"diffusion.{key} does not apply to cold diffusion (diffusion.degradation = "
                 f"{self.degradation!r}: the network restores x0 at uniformly drawn levels); remove it")

    @property
    def cold(self) -> bool:
        """Whether the run is cold diffusion (a degradation instead of Gaussian noise)."""
        return self.degradation is not None

    def schedule_config(self) -> dict[str, Any]:
        """The schedule this section describes, as `ddpm.schedules.from_config` takes it."""
        spec: dict[str, Any] = {"name": self.schedule, "num_timesteps": self.num_timesteps,
                                "zero_terminal_snr": self.zero_terminal_snr}
        if self.beta_start is not None:
            spec["beta_start"] = self.beta_start
        if self.beta_end is not None:
            spec["beta_end"] = self.beta_end
        return spec


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
            need(getattr(self, key) >= 1, f"train.{key} must be >= 1; got {getattr(self, key)}")
        for key in ("warmup_steps", "num_threads", "checkpoint_every", "sample_every", "log_every", "seed"):
            need(getattr(self, key) >= 0, f"train.{key} must be >= 0; got {getattr(self, key)}")
        need(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be a positive number; got {self.lr}")
        need(len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas),
              f"train.adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; "
              f"got {list(self.adam_betas)}")
        need(self.weight_decay >= 0, f"train.weight_decay must be >= 0; got {self.weight_decay}")
        need(0.0 <= self.ema_decay < 1.0, f"train.ema_decay must lie in [0, 1); got {self.ema_decay}")
        need(self.batch_size % self.grad_accum == 0,
              f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum "
              f"({self.grad_accum})")
        choice("train", "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        choice("train", "lr_schedule", self.lr_schedule, LR_SCHEDULES)
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
              f"train.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {self.device!r}")
        if self.warmup_steps > self.steps:  # legal, but the configured lr is then never reached
            peak = 100 * self.steps / self.warmup_steps
            warnings.warn(f"train.warmup_steps ({self.warmup_steps}) exceeds train.steps ({self.steps}): the "
                          f"learning rate peaks at {peak:.3g}% of train.lr; lower train.warmup_steps",
                          UserWarning, stacklevel=4)


@dataclass
class SampleConfig:
    """Sampling defaults: the preview grid written while training, and the defaults stored in model files."""

    sampler: str = "dpmpp_2m"
    steps: int = 20
    guidance_scale: float = 1.0
    num: int = 16

    def __post_init__(self) -> None:
        need(self.steps >= 1, f"sample.steps must be >= 1; got {self.steps}")
        need(self.num >= 1, f"sample.num must be >= 1; got {self.num}")
        choice("sample", "sampler", self.sampler, SAMPLER_NAMES)
        need(self.guidance_scale >= 0, f"sample.guidance_scale must be >= 0; got {self.guidance_scale}")


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
            need(value is None or value >= 1, f"text.{key} must be a positive integer; got {value}")


@dataclass
class AutoencoderTrainConfig:
    """The KL autoencoder of run.task = "autoencoder": the architecture fields of
    `ddpm.models.AutoencoderKLConfig` (defaults: its `small()` preset, f = 4) and the objective
    L_rec + kl_weight * KL of `ddpm.training.tasks.autoencoder.vae_loss` (LDM, Rombach et al. 2022, App. G).
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
        need(self.kl_weight >= 0 and math.isfinite(self.kl_weight),
              f"autoencoder.kl_weight must be a number >= 0; got {self.kl_weight}")
        choice("autoencoder", "reconstruction", self.reconstruction, RECONSTRUCTIONS)
        self.build()  # architecture errors name the field now, not when training starts

    def build(self, *, channels: int = 3, scaling_factor: float = 1.0) -> AutoencoderKLConfig:
        """The `AutoencoderKLConfig` these fields describe (SD structure otherwise)."""
        arch = {k: getattr(self, k) for k in ("latent_channels", "base_channels", "channel_mult",
                                              "num_res_blocks", "norm_groups", "mid_attention")}
        return AutoencoderKLConfig(in_channels=channels, out_channels=channels, scaling_factor=scaling_factor,
                                   **arch)


@dataclass
class ContrastiveTrainConfig:
    """The encoders of run.task = "contrastive" (CLIP, Radford et al. 2021, Sec. 2.3), trained with the
    symmetric InfoNCE loss and a learned temperature, initialised at `temperature` (CLIP: 0.07).

    The image encoder is a small ViT of CLIP's layout (`ddpm.models.CLIPVisionModelWithProjection`):
    `patch_size`, `width`, `layers`, `heads`, `mlp_ratio`; both towers project to `embed_dim`. The text
    encoder is the project's word transformer, set by [text]. `hard_negatives` adds, for each shapes
    caption, the edited captions of those kinds (colours swapped, shapes swapped, relation reversed) as
    extra negatives of its image (NegCLIP, Yuksekgonul et al. 2023, Sec. 4); empty: plain CLIP."""

    patch_size: int = 4
    width: int = 64
    layers: int = 3
    heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 64
    temperature: float = 0.07
    hard_negatives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("patch_size", "width", "layers", "heads", "mlp_ratio", "embed_dim"):
            value = getattr(self, key)
            need(isinstance(value, int) and value >= 1, f"contrastive.{key} must be a positive integer; "
                 f"got {value!r}")
        need(self.width % self.heads == 0,
             f"contrastive.heads ({self.heads}) must divide contrastive.width ({self.width})")
        need(0 < self.temperature < 1 and math.isfinite(self.temperature),
             f"contrastive.temperature must lie in (0, 1); got {self.temperature}")
        self.hard_negatives = tuple(self.hard_negatives)
        for kind in self.hard_negatives:
            choice("contrastive", "hard_negatives", kind, HARD_NEGATIVES)


@dataclass
class UnclipConfig:
    """unCLIP (DALL·E 2, Ramesh et al. 2022) on a frozen contrastive model (`encoder`: its model file or run
    folder, trained with run.task = "contrastive"). A decoder is a diffusion run with data.condition =
    "clip_image" (its UNet gets the image embedding; model.image_embed_tokens sets the extra context
    tokens); a prior is run.task = "unclip_prior", a transformer of `width`, `layers`, `heads` and
    `mlp_ratio` that predicts the image embedding from the caption (`ddpm.models.prior`)."""

    encoder: str | None = None
    width: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for key in ("width", "layers", "heads", "mlp_ratio"):
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"unclip.{key} must be a positive integer; got {value!r}")
        need(self.width % self.heads == 0,
             f"unclip.heads ({self.heads}) must divide unclip.width ({self.width})")
        need(self.encoder is None or isinstance(self.encoder, str),
             f"unclip.encoder must be a path (a contrastive model file or run folder); got {self.encoder!r}")


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
    contrastive: ContrastiveTrainConfig = field(default_factory=ContrastiveTrainConfig)
    unclip: UnclipConfig = field(default_factory=UnclipConfig)

    def __post_init__(self) -> None:
        cold, sampler = self.diffusion.cold, self.sample.sampler
        need(cold == (sampler in COLD_SAMPLER_NAMES),
             f"sample.sampler = {sampler!r} " + (
                 f"cannot sample the cold model of diffusion.degradation = {self.diffusion.degradation!r}; "
                 f"use one of {list(COLD_SAMPLER_NAMES)}" if cold else
                 "restores a degradation, and this run trains Gaussian diffusion; set diffusion.degradation "
                 "or choose a Gaussian sampler"))  # fmt: skip
