"""The names a config, a model file or a call may choose from: one tuple per choice, torch-free, so the
config layer validates a file without importing the code that implements each choice (which checks its
own table against these names on import)."""

PREDICTIONS = ("eps", "x0", "v")  # what the network outputs (ddpm.process)
VARIANCES = ("fixed_small", "fixed_large", "learned")  # the reverse-step variance (DDPM §3.2, IDDPM §3.1)
SCHEDULE_NAMES = ("linear", "cosine", "scaled_linear", "sigmoid")  # ddpm.schedules.SCHEDULES
SPACINGS = ("leading", "linspace", "trailing")  # timestep grids (ddpm.schedules)
COLD_SAMPLER_NAMES = ("cold", "cold_naive", "cold_direct")  # cold diffusion: Algorithms 2 and 1, one-shot
# ddpm.sampling.SAMPLERS: the Gaussian-noise samplers, then the cold ones (which need a degradation)
SAMPLER_NAMES = ("ddpm", "ddim", "plms", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
                 "unipc", "unipc_3", "lms", *COLD_SAMPLER_NAMES)
DEGRADATION_NAMES = ("blur", "mask", "downsample", "fade", "gaussian")  # ddpm.degradations.DEGRADATIONS
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")  # ddpm.objectives.sample_timesteps
CONDITIONS = ("none", "class", "text", "clip_image")  # ddpm.conditioning
TASKS = ("diffusion", "autoencoder", "contrastive", "unclip_prior")  # ddpm.training tasks
HARD_NEGATIVES = ("colour", "shape", "relation")  # caption edits of ddpm.data.shapes.hard_negatives
MIXED_PRECISION = ("auto", "no", "bf16")
LR_SCHEDULES = ("constant", "cosine")
RECONSTRUCTIONS = ("l2", "l1")  # the autoencoder's reconstruction loss
# Stable Diffusion 1.x's defaults where a call leaves them unset (spacing: the checkpoint's scheduler's);
# the SD pipeline and the CLI's help both read this one table.
SD_DEFAULTS = {"sampler": "dpmpp_2m", "steps": 30, "guidance_scale": 7.5, "width": 512, "height": 512,
               "strength": {"img2img": 0.75, "inpaint": 1.0}}
# Keywords of ddpm.data.load_dataset that a run sets itself, so data.options may not.
LOAD_KEYWORDS = frozenset({"split", "image_size", "channels", "flip", "seed", "holdout_fraction"})
