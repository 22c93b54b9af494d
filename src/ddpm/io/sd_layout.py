"""The Stable Diffusion 1.x checkpoint layouts: configs read off tensor shapes, readable key-mismatch errors,
and the scheduler settings SD 1.x ships with. A single file holds our UNet, VAE and text-encoder keys under
the `ddpm.io.keymaps.SINGLE_FILE` prefixes (`model.diffusion_model.`, `first_stage_model.`,
`cond_stage_model.transformer.`), the UNet's EMA copy under `model_ema.diffusion_model` with dots removed.

A single file holds no config, so the UNet, VAE and text-encoder configs are read from tensor shapes; what
shapes cannot show takes the SD 1.x value (8 attention heads in the UNet, 64-wide text heads, 32 groups
in every GroupNorm, VAE scaling 0.18215, epsilon prediction). Single files that ddpm writes record in
their metadata every config the shapes would not give back (`ddpm.io.sd.SETTINGS_META_KEY`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .. import schedules
from ..config.base import DictConfig
from ..models.autoencoder import AutoencoderKLConfig
from ..models.text_encoder import CLIPTextConfig
from ..models.unet import UNetConfig
from .keymaps import SINGLE_FILE, VAE_MODULES

__all__ = [
    "SchedulerConfig",
    "infer_unet_config",
    "infer_vae_config",
    "infer_text_config",
    "foreign_checkpoint_cause",
    "mismatch_error",
]

SD2_CONTEXT = 1024
SD1_CONTEXT = 768

_SAMPLER_CLASSES = {
    "PNDMScheduler": "plms",
    "DDIMScheduler": "ddim",
    "DDPMScheduler": "ddpm",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
}
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETA_SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear"}


@dataclass
class SchedulerConfig(DictConfig):
    """How an SD model was trained and is sampled by default (SD 1.x: scaled_linear 0.00085–0.012 over
    1000 steps, epsilon prediction, `leading` spacing with steps_offset 1, PLMS; Rombach et al. 2022)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction: str = "eps"
    spacing: str = "leading"
    steps_offset: int = 1
    sampler: str = "plms"

    def __post_init__(self) -> None:
        if self.beta_schedule not in _BETA_SCHEDULES.values():
            raise ValueError(f"beta_schedule must be one of {sorted(_BETA_SCHEDULES)}, got "
                             f"{self.beta_schedule!r}")
        if self.prediction not in _PREDICTIONS.values():
            raise ValueError(f"prediction must be one of {sorted(_PREDICTIONS.values())}, got "
                             f"{self.prediction!r}")
        if self.spacing not in schedules.SPACINGS:
            raise ValueError(f"spacing must be one of {list(schedules.SPACINGS)}, got {self.spacing!r}")

    def schedule(self) -> schedules.DiscreteSchedule:
        """The `DiscreteSchedule` these settings describe (from `ddpm.schedules`)."""
        make = schedules.scaled_linear if self.beta_schedule == "scaled_linear" else schedules.linear
        return make(self.num_train_timesteps, beta_start=self.beta_start, beta_end=self.beta_end)

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> SchedulerConfig:
        """From a diffusers `scheduler/scheduler_config.json` dict."""
        if d.get("trained_betas") is not None:
            raise ValueError("scheduler_config.json lists trained_betas; only scaled_linear and linear "
                             "beta schedules are supported")
        beta = d.get("beta_schedule", "linear")
        if beta not in _BETA_SCHEDULES:
            raise ValueError(f"scheduler beta_schedule {beta!r} is not supported; expected one of "
                             f"{sorted(_BETA_SCHEDULES)}")
        prediction = d.get("prediction_type", "epsilon")
        if prediction not in _PREDICTIONS:
            raise ValueError(f"scheduler prediction_type {prediction!r} is not one of {sorted(_PREDICTIONS)}")
        return cls(
            num_train_timesteps=int(d.get("num_train_timesteps", 1000)),
            beta_schedule=_BETA_SCHEDULES[beta],
            beta_start=float(d.get("beta_start", 0.0001)),
            beta_end=float(d.get("beta_end", 0.02)),
            prediction=_PREDICTIONS[prediction],
            spacing=d.get("timestep_spacing", "leading"),
            steps_offset=int(d.get("steps_offset", 0)),
            sampler=_SAMPLER_CLASSES.get(d.get("_class_name", ""), "plms"),
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers `scheduler_config.json` dict for these settings."""
        by_sampler = {v: k for k, v in _SAMPLER_CLASSES.items()}
        extra: dict[str, Any] = {"clip_sample": False, "set_alpha_to_one": False}
        if self.sampler == "plms":
            extra = {"skip_prk_steps": True, "set_alpha_to_one": False}
        return {
            "_class_name": by_sampler.get(self.sampler, "PNDMScheduler"),
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "prediction_type": {v: k for k, v in _PREDICTIONS.items()}[self.prediction],
            "timestep_spacing": self.spacing,
            "steps_offset": self.steps_offset,
            "trained_betas": None,
            **extra,
        }


# ------------------------------------------------------------------------------------ reading shapes
def _indices(keys: list[str], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def infer_unet_config(sd: Mapping[str, Tensor], *, wide_context: bool = False) -> UNetConfig:
    """The `UNetConfig` of a latent UNet state dict in our (= single-file) names, from its shapes;
    `wide_context` accepts SD 2's 1024-wide text states (the x4 upscaler's loader sets it)."""
    keys = list(sd)
    stem = sd.get("input_blocks.0.0.weight")
    if stem is None or stem.ndim != 4 or "out.2.weight" not in sd:
        raise ValueError("the UNet weights lack input_blocks.0.0.weight or out.2.weight")
    mc, in_channels = int(stem.shape[0]), int(stem.shape[1])
    context = [tuple(v.shape) for k, v in sd.items() if k.endswith("attn2.to_k.weight")]
    if not context:
        raise ValueError("the UNet has no cross-attention (attn2) weights, so it is not a text-conditioned "
                         "latent diffusion UNet")
    context_dim = int(context[0][1])
    if context_dim == SD2_CONTEXT and not wide_context:
        raise ValueError(f"cross-attention width {SD2_CONTEXT}: this is an SD 2.x checkpoint, which is not "
                         "supported yet (SD 1.x has width 768)")
    widths: list[list[int]] = [[]]
    attention: list[bool] = [False]
    for i in _indices(keys, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in sd:
            widths.append([])
            attention.append(False)
            continue
        out = sd.get(f"input_blocks.{i}.0.out_layers.3.weight")
        if out is None:
            raise ValueError(f"input block {i} is neither a ResBlock nor a downsampler")
        widths[-1].append(int(out.shape[0]))
        attention[-1] |= any(k.startswith(f"input_blocks.{i}.1.") for k in keys)
    if not widths[0] or any(len(w) != len(widths[0]) for w in widths) or any(w[-1] % mc for w in widths):
        raise ValueError(f"the UNet's input blocks do not form levels of equal depth: widths {widths}")
    depth = max(_indices(keys, r".*\.transformer_blocks\.(\d+)\.")) + 1
    proj_in = next(v for k, v in sd.items() if k.endswith(".proj_in.weight"))
    return UNetConfig(
        in_channels=in_channels,
        out_channels=int(sd["out.2.weight"].shape[0]),
        model_channels=mc,
        channel_mult=tuple(w[-1] // mc for w in widths),
        num_res_blocks=len(widths[0]),
        attention_resolutions=tuple(2**i for i, a in enumerate(attention) if a),
        num_heads=8,
        context_dim=context_dim,
        transformer_depth=depth,
        use_linear_projection=proj_in.ndim == 2,
    )


def infer_vae_config(sd: Mapping[str, Tensor]) -> AutoencoderKLConfig:
    """The `AutoencoderKLConfig` of an autoencoder state dict in our (= single-file) names."""
    keys = list(sd)
    if "encoder.conv_in.weight" not in sd or "decoder.conv_in.weight" not in sd:
        raise ValueError("the VAE weights lack encoder.conv_in.weight or decoder.conv_in.weight")
    base = int(sd["encoder.conv_in.weight"].shape[0])
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    mult = [int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) // base for i in levels]
    return AutoencoderKLConfig(
        in_channels=int(sd["encoder.conv_in.weight"].shape[1]),
        out_channels=int(sd["decoder.conv_out.weight"].shape[0]),
        latent_channels=int(sd["decoder.conv_in.weight"].shape[1]),
        base_channels=base,
        channel_mult=tuple(mult),
        num_res_blocks=len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")),
        mid_attention="encoder.mid.attn_1.q.weight" in sd,
        use_quant_conv="quant_conv.weight" in sd,
        use_post_quant_conv="post_quant_conv.weight" in sd,
    )


def infer_text_config(sd: Mapping[str, Tensor]) -> CLIPTextConfig:
    """The `CLIPTextConfig` of a text-encoder state dict (keys with the `text_model.` level)."""
    token = sd.get("text_model.embeddings.token_embedding.weight")
    position = sd.get("text_model.embeddings.position_embedding.weight")
    if token is None or position is None:
        raise ValueError("the text-encoder weights lack the token or position embedding")
    vocab, width = (int(n) for n in token.shape)
    if width % 64:
        raise ValueError(f"text width {width} is not a multiple of CLIP's 64-wide heads; pass text_config")
    return CLIPTextConfig(
        vocab_size=vocab,
        width=width,
        layers=len(_indices(list(sd), r"text_model\.encoder\.layers\.(\d+)\.")),
        heads=width // 64,
        intermediate=int(sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        max_positions=int(position.shape[0]),
        pad_token_id=min(49407, vocab - 1),
    )


# ------------------------------------------------------------------------------------------ diagnosis
def foreign_checkpoint_cause(keys: list[str]) -> str | None:
    """Why a file whose keys are `keys` is not an SD 1.x checkpoint, or None when it may be one."""
    def some(pred: Any) -> bool:
        return any(pred(k) for k in keys)

    if some(lambda k: k.startswith("conditioner.embedders")):
        return "it has `conditioner.embedders` keys: this is an SDXL checkpoint, which is not supported yet"
    if some(lambda k: k.startswith("cond_stage_model.model.")):
        return ("its text encoder is OpenCLIP (`cond_stage_model.model.`): this is an SD 2.x checkpoint, "
                "which is not supported yet")
    if some(lambda k: k.startswith(SINGLE_FILE.unet)):
        return None
    if some(lambda k: "lora_" in k or ".lora." in k or k.endswith(".alpha")):
        return ("it holds LoRA weights (`lora_` keys): a LoRA is a small add-on to a base model, not a full "
                "checkpoint; load the base model it was trained for")
    if some(lambda k: k.startswith(("string_to_param", "emb_params", "clip_l", "clip_g"))):
        return "it is a textual-inversion embedding, not a full checkpoint"
    if some(lambda k: "down_blocks." in k or k.startswith("mid_block.")):
        return ("its keys are in the diffusers layout (`down_blocks.*`): it is one component of a diffusers "
                "folder; load the whole folder instead")
    if keys and all(k.startswith((*VAE_MODULES, "loss."))
                    for k in keys):
        return ("it holds only autoencoder weights (`encoder.*`, `decoder.*`): a VAE-only file, not a full "
                "checkpoint; load it with ddpm.io.vae_files.load_vae_single_file")
    if some(lambda k: k.startswith(("text_model.", "encoder.layers.", "embeddings."))):
        return "it holds only a text encoder, not a full checkpoint"
    return (f"it has no `{SINGLE_FILE.unet}*` keys, so it is not a Stable Diffusion checkpoint "
            f"(its first keys: {keys[:3]})")


def mismatch_error(
    component: str,
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    config_note: str = "",
) -> ValueError | None:
    """One readable error for weights that do not fit a module (counts, a few examples, a likely cause)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if wrong:
        examples = "; ".join(f"{k}: file {list(found[k])}, model {list(expected[k])}" for k in wrong[:2])
        parts.append(f"{len(wrong)} of the wrong shape (e.g. {examples})")
    cause = _likely_cause(component, expected, found, missing, wrong)
    summary = ", ".join(parts)
    return ValueError(f"{source}: the {component} weights do not fit{config_note}: {summary}. {cause}")


def _likely_cause(
    component: str,
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    missing: list[str],
    wrong: list[str],
) -> str:
    if not found:
        return f"The {component} is missing from this checkpoint."
    stem = "input_blocks.0.0.weight"
    if component == "UNet" and stem in wrong:
        got, want = found[stem][1], expected[stem][1]
        if 9 in (got, want):
            kind = "an inpainting" if got == 9 else "a plain (4-channel)"
            return (f"The file's UNet takes {got} input channels, the model {want}: it is {kind} checkpoint; "
                    "load it without a UNet config so the channels are read from the file.")
    widths = {tuple(v)[1] for k, v in found.items() if k.endswith("attn2.to_k.weight") and len(v) == 2}
    if SD2_CONTEXT in widths:
        return (f"Cross-attention width {SD2_CONTEXT}: this is an SD 2.x checkpoint, which is not supported "
                "yet.")
    if missing and len(missing) == len(expected):
        return f"None of the expected {component} keys are there: the file holds a different model."
    if wrong:
        return ("The shapes differ from the config: the file was trained with another architecture; load it "
                "without an explicit config so the shapes are read from the file.")
    return ("Parts of the model are absent or extra: the file is incomplete, from a different model "
            "version, or damaged.")
