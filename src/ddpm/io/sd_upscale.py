"""The Stable Diffusion x4 upscaler (`stabilityai/stable-diffusion-x4-upscaler`) from its diffusers folder
into our modules: a 7-channel latent UNet (4 latent + 3 low-res image channels) whose class table embeds the
low-res image's `noise_level`, an f=4 `AutoencoderKL` (scaling factor 0.08333), the OpenCLIP-H text encoder
in transformers' layout, the main scheduler (DDIM with v-prediction in the release) and the low-res
scheduler that noises the input image (`low_res_scheduler/`, a DDPMScheduler).

Folder: `model_index.json` (`StableDiffusionUpscalePipeline`, `max_noise_level`), `unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`, `low_res_scheduler/`. Weights are renamed and configs translated
by the same tables as SD 1.x (`ddpm.io.keymaps`, `ddpm.io.diffusers_configs`).

The release's single file (`x4-upscaler-ema.ckpt` / `.safetensors`: `model.diffusion_model.` in our names,
`first_stage_model.`, the OpenCLIP text tower under `cond_stage_model.model.`) reads too. Its shapes give
the architecture except what the release's `x4-upscaling.yaml` fixes, taken from `RELEASE`: 8 UNet heads,
OpenCLIP's 64-wide text heads and penultimate layer, the VAE's 0.08333, the schedules and the noise-level
limit. A level attends the text twice where its `attn1` keys are context-wide and not pixel-wide; where the
two widths are equal (the release's deepest level) it is read as self-attention, as the release has it.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.autoencoder import AutoencoderKL
from ..models.text_encoder import CLIPTextConfig, CLIPTextModel
from ..models.unet import UNet
from ..text.clip_tokenizer import CLIPTokenizer
from .checkpoint import load_state_dict
from .diffusers_configs import unet_config_from_diffusers, vae_config_from_diffusers
from .keymaps import (
    OPEN_CLIP_PREFIX,
    SINGLE_FILE,
    diffusers_unet_state_dict,
    open_clip_text_keys,
    strip_prefix,
    text_keys,
    vae_conv_attention,
    vae_from_diffusers,
)
from .model_file import file_hash
from .sd import (
    _TEXT_FILES,
    _UNET_FILES,
    _build,
    _convert,
    _ema_weights,
    _infer,
    _read_json,
    _stored_dtype,
    _weights_file,
)
from .sd_layout import SchedulerConfig, infer_unet_config, infer_vae_config

__all__ = ["UpscalerModels", "load_sd_upscaler", "UPSCALE_PIPELINE", "DEFAULT_MAX_NOISE_LEVEL", "RELEASE"]

UPSCALE_PIPELINE = "StableDiffusionUpscalePipeline"
DEFAULT_MAX_NOISE_LEVEL = 350  # diffusers' default for the pipeline's `max_noise_level`
IMAGE_CHANNELS = 3  # the low-res RGB image concatenated to the latents
# What the release's single file does not hold (its x4-upscaling.yaml; the folder's JSON says the same)
_BETAS = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02)
RELEASE: dict[str, Any] = {
    "unet_heads": 8,
    "text_head_width": 64,  # OpenCLIP's text heads
    "text_act": "gelu",
    "pad_token": "!",  # OpenCLIP pads with id 0
    "scaling_factor": 0.08333,
    "scheduler": SchedulerConfig(prediction="v", spacing="leading", steps_offset=1, sampler="ddim", **_BETAS),
    "low_res": SchedulerConfig(**_BETAS),
    "max_noise_level": 350,
    "final_alpha_one": False,
}


@dataclass
class UpscalerModels:
    """The parts of an SD x4 upscaler as our modules, with the settings they came with."""

    unet: UNet
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerConfig  # the sampler's: betas, prediction (v), spacing, steps_offset, sampler
    low_res: SchedulerConfig  # the betas that noise the low-res image to `noise_level`
    max_noise_level: int
    final_alpha_one: bool  # DDIM's set_alpha_to_one: the last step lands on clean data
    model_hash: str
    source_dtype: torch.dtype = torch.float32


def load_sd_upscaler(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
    nonfinite: str = "warn",
) -> UpscalerModels:
    """An SD x4 upscaler from its diffusers folder; `dtype` (default float32) is what the weights become."""
    root = Path(path)
    dtype = torch.float32 if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if root.is_file():
        return _load_single_file(root, dtype=dtype, device=device, nonfinite=nonfinite)
    if not (root / "model_index.json").is_file():
        raise FileNotFoundError(f"{str(root)!r} is not a diffusers folder: it has no model_index.json")
    index = _read_json(root / "model_index.json")
    if index.get("_class_name") != UPSCALE_PIPELINE:
        raise ValueError(f"{root} holds a {index.get('_class_name') or 'unknown'} pipeline, not an SD x4 "
                         f"upscaler ({UPSCALE_PIPELINE})")
    for part in ("unet", "vae", "text_encoder"):
        if not (root / part / "config.json").is_file():
            raise FileNotFoundError(f"{root} lacks {part}/config.json: the {part} component is missing")
    source = str(root)
    unet_config = unet_config_from_diffusers(_read_json(root / "unet" / "config.json"))
    vae_config = vae_config_from_diffusers(_read_json(root / "vae" / "config.json"))
    text_config = CLIPTextConfig.from_transformers(_read_json(root / "text_encoder" / "config.json"))
    c_lat = vae_config.latent_channels
    if unet_config.in_channels != c_lat + IMAGE_CHANNELS or unet_config.num_classes is None:
        raise ValueError(
            f"{root}: its UNet takes {unet_config.in_channels} channels and "
            f"{'no' if unet_config.num_classes is None else unet_config.num_classes} class embeddings; an x4 "
            f"upscaler's takes {c_lat + IMAGE_CHANNELS} ({c_lat} latent + {IMAGE_CHANNELS} image) and embeds "
            "the noise level (num_class_embeds)"
        )
    max_noise = int(index.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL))
    if not 0 <= max_noise < unet_config.num_classes:
        raise ValueError(f"{root}: max_noise_level {max_noise} lies outside the UNet's "
                         f"{unet_config.num_classes} noise-level embeddings")
    scheduler_json = _scheduler_json(root / "scheduler", "scheduler")
    low_res_json = _scheduler_json(root / "low_res_scheduler", "low_res_scheduler")
    for name, d in (("scheduler", scheduler_json), ("low_res_scheduler", low_res_json)):
        if d.get("thresholding"):
            raise ValueError(f"{root}: {name} uses dynamic thresholding, which this loader does not run")
    if scheduler_json.get("clip_sample"):
        raise ValueError(f"{root}: scheduler/ clips x0 (clip_sample=true), which latent sampling does not do")
    files = [_weights_file(root / "unet", _UNET_FILES), _weights_file(root / "vae", _UNET_FILES),
             _weights_file(root / "text_encoder", _TEXT_FILES)]
    unet_raw, vae_raw, text_raw = (load_state_dict(f, nonfinite=nonfinite) for f in files)
    unet_sd = _convert(diffusers_unet_state_dict, unet_raw, unet_config, "UNet", files[0])
    vae_sd = _convert(lambda sd, _: vae_from_diffusers(sd), vae_raw, vae_config, "VAE", files[1])
    if any((root / "tokenizer" / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        tokenizer = CLIPTokenizer.from_folder(root / "tokenizer")
    else:
        warnings.warn(f"{root} has no tokenizer/ folder; using CLIP's packaged vocabulary", stacklevel=2)
        tokenizer = CLIPTokenizer.from_bpe_file()
    digest = hashlib.sha256("".join(file_hash(f, full=True) for f in files).encode()).hexdigest()[:10]
    kw: dict[str, Any] = dict(dtype=dtype, device=device, source=source)
    return UpscalerModels(
        unet=_build(UNet, unet_config, unet_sd, "UNet", **kw),
        vae=_build(AutoencoderKL, vae_config, vae_sd, "VAE", **kw),
        text_encoder=_build(CLIPTextModel, text_config, text_keys(text_raw), "text encoder", **kw),
        tokenizer=tokenizer,
        scheduler=SchedulerConfig.from_diffusers(scheduler_json),
        low_res=SchedulerConfig.from_diffusers(low_res_json),
        max_noise_level=max_noise,
        final_alpha_one=bool(scheduler_json.get("set_alpha_to_one", True)),
        model_hash=digest,
        source_dtype=_stored_dtype(unet_raw),
    )


def _scheduler_json(folder: Path, name: str) -> dict[str, Any]:
    file = folder / "scheduler_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder.parent} lacks {name}/scheduler_config.json; the x4 upscaler needs "
                                "both its sampler's and its low-res noising schedule")
    return _read_json(file)


def _load_single_file(path: Path, *, dtype: torch.dtype, device: str | torch.device, nonfinite: str
                      ) -> UpscalerModels:
    """The release's single-file layout (see the module docstring)."""
    raw = load_state_dict(path, nonfinite=nonfinite)
    source = str(path)
    unet_sd = _ema_weights(strip_prefix(raw, SINGLE_FILE.unet), raw, source=source)
    vae_sd = {k: v for k, v in strip_prefix(raw, SINGLE_FILE.vae).items() if not k.startswith("loss.")}
    clip_sd = strip_prefix(raw, OPEN_CLIP_PREFIX)
    for component, sd, prefix in (("UNet", unet_sd, SINGLE_FILE.unet), ("VAE", vae_sd, SINGLE_FILE.vae),
                                  ("OpenCLIP text encoder", clip_sd, OPEN_CLIP_PREFIX)):
        if not sd:
            raise ValueError(f"{source} is not an SD x4 upscaler single file: it has no `{prefix}*` keys "
                             f"(the {component}); load its diffusers folder instead")
    labels = unet_sd.get("label_emb.weight")
    if labels is None or labels.ndim != 2:
        raise ValueError(f"{source}: its UNet has no noise-level embedding (label_emb.weight), so it is "
                         "not an x4 upscaler")
    unet_config = _infer(_upscaler_unet_config, unet_sd, "UNet", source)
    # diffusers and the file have no "null" row in the class table; ours appends one as zeros
    unet_sd = {**unet_sd, "label_emb.weight": torch.cat([labels, labels.new_zeros(1, labels.shape[1])])}
    vae_config = _infer(infer_vae_config, vae_sd, "VAE", source)
    vae_config = vae_config.replace(scaling_factor=RELEASE["scaling_factor"])
    text_sd = _infer(open_clip_text_keys, clip_sd, "text encoder", source)
    text_config = _open_clip_text_config(text_sd)
    kw: dict[str, Any] = dict(dtype=dtype, device=device, source=source)
    return UpscalerModels(
        unet=_build(UNet, unet_config, unet_sd, "UNet", **kw),
        vae=_build(AutoencoderKL, vae_config, vae_conv_attention(vae_sd), "VAE", **kw),
        text_encoder=_build(CLIPTextModel, text_config, text_sd, "text encoder", **kw),
        tokenizer=CLIPTokenizer.from_bpe_file(pad_token=RELEASE["pad_token"]),
        scheduler=RELEASE["scheduler"],
        low_res=RELEASE["low_res"],
        max_noise_level=RELEASE["max_noise_level"],
        final_alpha_one=RELEASE["final_alpha_one"],
        model_hash=file_hash(path),
        source_dtype=_stored_dtype(unet_sd),
    )


def _upscaler_unet_config(sd: dict[str, Any]) -> Any:
    """The UNet config from shapes: SD's reading plus the noise-level table and the cross-only levels."""
    cfg = infer_unet_config(sd, wide_context=True)
    n, levels = cfg.num_res_blocks, len(cfg.channel_mult)
    factors = set()
    for key, v in sd.items():
        if key.endswith("attn1.to_k.weight") and int(v.shape[1]) != int(v.shape[0]) \
                and int(v.shape[1]) == cfg.context_dim:
            part, index = key.split(".")[0], int(key.split(".")[1])
            if part == "input_blocks":  # the stem, then per level n ResBlocks and a downsampler
                factors.add(2 ** ((index - 1) // (n + 1)))
            elif part == "output_blocks":  # per level n + 1 ResBlocks, deepest level first
                factors.add(2 ** (levels - 1 - index // (n + 1)))
    return cfg.replace(num_classes=int(sd["label_emb.weight"].shape[0]), num_heads=RELEASE["unet_heads"],
                       cross_attention_only=tuple(sorted(factors)))


def _open_clip_text_config(sd: dict[str, Any]) -> CLIPTextConfig:
    token = sd["text_model.embeddings.token_embedding.weight"]
    width = int(token.shape[1])
    if width % RELEASE["text_head_width"]:
        raise ValueError(f"OpenCLIP text width {width} is not a multiple of its 64-wide heads")
    layers = len({k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layers.")})
    return CLIPTextConfig(
        vocab_size=int(token.shape[0]), width=width, layers=layers, heads=width // RELEASE["text_head_width"],
        intermediate=int(sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        max_positions=int(sd["text_model.embeddings.position_embedding.weight"].shape[0]),
        act=RELEASE["text_act"],
    )
