"""Run configuration: nested dataclasses loaded from TOML, unknown keys rejected, dotted overrides.

A config file has the sections below; every key is optional and defaults to the value shown by
`ddpm.config.dump_config(Config())`.

    [run]        name, dir, task                 -> the run folder dir/name; task "diffusion", "autoencoder"
                                                    or "contrastive"
    [data]       dataset, image_size, channels, flip, condition, cond_drop_prob, num_workers
    [model]      the fields of `ddpm.models.UNetConfig`
    [diffusion]  schedule, num_timesteps, beta_start, beta_end, zero_terminal_snr, prediction,
                 learned_variance, min_snr_gamma, vlb_weight, timestep_sampling, timestep_loc,
                 timestep_scale
    [train]      steps, batch_size, lr, …           (see `TrainConfig`)
    [sample]     sampler, steps, guidance_scale, num (the preview grid written while training)
    [text]       text-conditioning settings (see `TextConfig`)
    [autoencoder] the KL autoencoder trained when run.task = "autoencoder" (see `AutoencoderTrainConfig`)
    [contrastive] the CLIP-style encoders of run.task = "contrastive" (see `ContrastiveTrainConfig`)
    [unclip]      unCLIP's frozen encoder and prior (data.condition = "clip_image", run.task = "unclip_prior")

TOML has no null: an optional key that is absent takes its default; write the string "none" to set an
optional key to None explicitly (e.g. `--set diffusion.min_snr_gamma=none`).

`model.in_channels`, `out_channels`, `num_classes` and `learned_variance` follow from [data] and
[diffusion]; training fills them in (see `ddpm.training.resolve_unet_config`).
"""

from .choices import TASKS, TIMESTEP_SAMPLINGS
from .run import (
    AutoencoderTrainConfig,
    Config,
    ContrastiveTrainConfig,
    DataConfig,
    DiffusionConfig,
    RunConfig,
    SampleConfig,
    TextConfig,
    TrainConfig,
    UnclipConfig,
)
from .toml import apply_overrides, config_from_dict, config_to_dict, dump_config, load_config, parse_override

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
    "TASKS",
    "TIMESTEP_SAMPLINGS",
    "load_config",
    "dump_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "parse_override",
]
