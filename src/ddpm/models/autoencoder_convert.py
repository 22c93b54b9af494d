"""`AutoencoderKL` weights in and out of the formats people have: diffusers folders, Stable Diffusion single
files, and our own model files.

Our parameter names are the LDM single-file names, so a single file loads by stripping
`first_stage_model.`; a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`) needs the
renaming below, with L levels. Nothing here imports diffusers.

| diffusers                                                 | ours (LDM)                                  |
| --------------------------------------------------------- | ------------------------------------------- |
| `{en,de}coder.conv_norm_out`                              | `{en,de}coder.norm_out`                     |
| `encoder.down_blocks.i.resnets.j`                         | `encoder.down.i.block.j`                    |
| `encoder.down_blocks.i.downsamplers.0.conv`               | `encoder.down.i.downsample.conv`            |
| `decoder.up_blocks.i.resnets.j`                           | `decoder.up.(L-1-i).block.j`                |
| `decoder.up_blocks.i.upsamplers.0.conv`                   | `decoder.up.(L-1-i).upsample.conv`          |
| `*.mid_block.resnets.{0,1}`                               | `*.mid.block_{1,2}`                         |
| `*.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` | `*.mid.attn_1.{norm,q,k,v,proj_out}`  |
| resnet `conv_shortcut`                                    | `nin_shortcut`                              |

Older diffusers files name the attention `query/key/value/proj_attn`; both read. diffusers stores those
projections as Linear weights `[C, C]`, LDM as 1x1 convs `[C, C, 1, 1]`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ..io.atomic import atomic_write_bytes
from ..io.checkpoint import load_state_dict
from ..io.model_file import FORMAT, VERSION, load_model_file, save_model_file
from .autoencoder import AutoencoderKL, AutoencoderKLConfig

__all__ = [
    "SINGLE_FILE_PREFIX",
    "MODEL_FILE_PREFIX",
    "vae_from_diffusers",
    "vae_to_diffusers",
    "vae_config_from_diffusers",
    "vae_config_to_diffusers",
    "vae_from_single_file",
    "vae_to_single_file",
    "vae_from_state_dict",
    "load_vae_folder",
    "save_vae_folder",
    "load_vae_single_file",
    "save_autoencoder_file",
    "load_autoencoder_file",
]

SINGLE_FILE_PREFIX = "first_stage_model."
MODEL_FILE_PREFIX = "vae."
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin")
_ATTN_FROM_DIFFUSERS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                        "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_ATTN_TO_DIFFUSERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# Parameters whose names are the same in both layouts.
_SAME = r"(encoder\.|decoder\.)?(conv_in|conv_out|quant_conv|post_quant_conv)\.(weight|bias)"
# Options of the diffusers config that are runtime hints or bookkeeping, not architecture.
_IGNORED = {"sample_size", "force_upcast"}
_REQUIRED = {"act_fn": "silu", "latents_mean": None, "latents_std": None}


# ------------------------------------------------------------------------------------------ key renaming
def _levels(keys: list[str], pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    if not found:
        raise ValueError(f"no key matches {pattern!r}: this is not an AutoencoderKL state dict")
    return max(found) + 1


def _leaf(name: str) -> str:
    return "nin_shortcut" + name[len("conv_shortcut"):] if name.startswith("conv_shortcut") else name


def vae_from_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers `AutoencoderKL` state dict -> ours (LDM single-file names without the prefix)."""
    keys = list(state_dict)
    levels = _levels(keys, r"decoder\.up_blocks\.(\d+)\.")
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        new: str | None = None
        if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_leaf(m[3])}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_leaf(m[3])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_leaf(m[3])}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            if m[2] in _ATTN_FROM_DIFFUSERS:
                leaf = _ATTN_FROM_DIFFUSERS[m[2]]
                new = f"{m[1]}.mid.attn_1.{leaf}.{m[3]}"
                if leaf != "norm" and value.ndim == 2:  # Linear [C, C] -> 1x1 conv [C, C, 1, 1]
                    value = value[:, :, None, None]
        elif re.fullmatch(_SAME, key):
            new = key
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"diffusers AutoencoderKL keys with no place in ours: {unknown[:8]}"
                         f"{' …' if len(unknown) > 8 else ''}")
    return out


def vae_to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our (LDM) state dict -> the current diffusers `AutoencoderKL` names (`to_q`… as Linear weights)."""
    levels = _levels(list(state_dict), r"decoder\.up\.(\d+)\.")
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        new: str | None = None
        if m := re.fullmatch(r"(encoder|decoder)\.norm_out\.(\w+)", key):
            new = f"{m[1]}.conv_norm_out.{m[2]}"
        elif m := re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.+)", key):
            new = f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{m[3].replace('nin_shortcut', 'conv_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(\w+)", key):
            new = f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.+)", key):
            i = levels - 1 - int(m[1])
            new = f"decoder.up_blocks.{i}.resnets.{m[2]}.{m[3].replace('nin_shortcut', 'conv_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(\w+)", key):
            new = f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(.+)", key):
            new = f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3].replace('nin_shortcut', 'conv_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", key):
            new = f"{m[1]}.mid_block.attentions.0.{_ATTN_TO_DIFFUSERS[m[2]]}.{m[3]}"
            if m[2] != "norm" and value.ndim == 4:  # 1x1 conv -> Linear
                value = value[:, :, 0, 0]
        elif re.fullmatch(_SAME, key):
            new = key
        if new is None:
            unknown.append(key)
        else:
            out[new] = value.contiguous()
    if unknown:
        raise ValueError(f"keys that are not AutoencoderKL parameters: {unknown[:8]}"
                         f"{' …' if len(unknown) > 8 else ''}")
    return out


def vae_to_single_file(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> the Stable Diffusion single-file keys (`first_stage_model.` + our names)."""
    return {SINGLE_FILE_PREFIX + k: v for k, v in state_dict.items()}


def vae_from_single_file(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The autoencoder part of a single-file checkpoint -> our state dict: keys under `first_stage_model.`
    (a whole SD file) or, for a VAE-only file, the `encoder.`/`decoder.`/`*quant_conv.` keys; the training
    losses some VAE files carry (`loss.…`) are left out."""
    n = len(SINGLE_FILE_PREFIX)
    prefixed = {k[n:]: v for k, v in state_dict.items() if k.startswith(SINGLE_FILE_PREFIX)}
    if prefixed:
        return prefixed
    own = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
    found = {k: v for k, v in state_dict.items() if k.startswith(own)}
    if not found:
        raise ValueError(
            f"no autoencoder weights found: expected keys under {SINGLE_FILE_PREFIX!r} (a Stable Diffusion "
            f"single file) or 'encoder.'/'decoder.' (a VAE-only file); its first keys are "
            f"{list(state_dict)[:4]}"
        )
    return found


# ------------------------------------------------------------------------------------------------ configs
def vae_config_from_diffusers(config: Mapping[str, Any]) -> AutoencoderKLConfig:
    """Our `AutoencoderKLConfig` for a diffusers `AutoencoderKL` config (its `config.json`)."""
    c = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    bad = {k: c[k] for k, want in _REQUIRED.items() if k in c and c[k] != want}
    if bad:
        raise ValueError(f"diffusers AutoencoderKL options our AutoencoderKL does not express: {bad}")
    boc = [int(b) for b in c.get("block_out_channels", (64,))]
    base = boc[0]
    if any(b % base for b in boc):
        raise ValueError(f"block_out_channels {boc} are not multiples of the first; no channel_mult fits")
    down = list(c.get("down_block_types", ("DownEncoderBlock2D",)))
    up = list(c.get("up_block_types", ("UpDecoderBlock2D",)))
    if set(down) != {"DownEncoderBlock2D"} or set(up) != {"UpDecoderBlock2D"} or len(down) != len(boc) \
            or len(up) != len(boc):
        raise ValueError(f"unsupported block types {down} / {up}: expected one DownEncoderBlock2D and one "
                         f"UpDecoderBlock2D per entry of block_out_channels {boc}")
    known = {"in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
             "layers_per_block", "latent_channels", "norm_num_groups", "scaling_factor", "shift_factor",
             "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention", *_IGNORED, *_REQUIRED}
    unknown = sorted(set(c) - known)
    if unknown:
        raise ValueError(f"unknown diffusers AutoencoderKL config key(s) {unknown}; this loader knows "
                         f"{sorted(known)}")
    return AutoencoderKLConfig(
        in_channels=int(c.get("in_channels", 3)),
        out_channels=int(c.get("out_channels", 3)),
        latent_channels=int(c.get("latent_channels", 4)),
        base_channels=base,
        channel_mult=tuple(b // base for b in boc),
        num_res_blocks=int(c.get("layers_per_block", 1)),
        norm_groups=int(c.get("norm_num_groups", 32)),
        norm_eps=1e-6,  # fixed inside diffusers' encoder and decoder
        mid_attention=bool(c.get("mid_block_add_attention", True)),
        use_quant_conv=bool(c.get("use_quant_conv", True)),
        use_post_quant_conv=bool(c.get("use_post_quant_conv", True)),
        scaling_factor=float(c.get("scaling_factor", 0.18215)),
        shift_factor=c.get("shift_factor"),
    )


def vae_config_to_diffusers(config: AutoencoderKLConfig) -> dict[str, Any]:
    """The diffusers `AutoencoderKL` `config.json` for our config."""
    if config.norm_eps != 1e-6:
        raise ValueError(f"diffusers' AutoencoderKL fixes GroupNorm eps at 1e-6; this model uses "
                         f"{config.norm_eps}")
    levels = len(config.channel_mult)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [config.base_channels * m for m in config.channel_mult],
        "layers_per_block": config.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": config.latent_channels,
        "norm_num_groups": config.norm_groups,
        "scaling_factor": config.scaling_factor,
        "shift_factor": config.shift_factor,
        "latents_mean": None,
        "latents_std": None,
        "use_quant_conv": config.use_quant_conv,
        "use_post_quant_conv": config.use_post_quant_conv,
        "mid_block_add_attention": config.mid_attention,
    }


# ---------------------------------------------------------------------------------------------- loading
def vae_from_state_dict(
    state_dict: Mapping[str, Tensor],
    config: AutoencoderKLConfig,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device = "cpu",
) -> AutoencoderKL:
    """An `AutoencoderKL(config)` with a copy of `state_dict` (our names), checked key by key and shape by
    shape; `dtype=None` keeps the weights' own precision."""
    with torch.device("meta"):
        model = AutoencoderKL(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if k in expected and v.ndim == 2 and len(expected[k]) == 4:
            v = v[:, :, None, None]  # some single files store the attention projections as Linear weights
        sd[k] = v
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k}: {tuple(sd[k].shape)} vs {expected[k]}" for k in expected if k in sd
             and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(
            "the weights do not fit this AutoencoderKL config "
            f"(base_channels={config.base_channels}, channel_mult={list(config.channel_mult)}, "
            f"num_res_blocks={config.num_res_blocks}): missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}; pass the config the weights were trained with"
        )
    # Fresh storage, then a copy: the model never aliases the caller's tensors (e.g. another model's weights).
    if dtype is None:
        dtype = next(v.dtype for v in sd.values() if v.is_floating_point())
    model = model.to_empty(device=device).to(dtype=dtype)
    model.load_state_dict(sd, strict=True)
    return model


def _folder(path: str | Path) -> Path:
    path = Path(path)
    if (path / "vae" / "config.json").is_file():  # a whole pipeline folder
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a diffusers AutoencoderKL folder (no config.json)")
    return path


def load_vae_folder(
    path: str | Path, *, dtype: torch.dtype | None = torch.float32, device: str | torch.device = "cpu"
) -> AutoencoderKL:
    """Our `AutoencoderKL` from a diffusers folder (`config.json` + weights) or a pipeline's `vae/`."""
    folder = _folder(path)
    config = vae_config_from_diffusers(json.loads((folder / "config.json").read_text()))
    weights = next((folder / name for name in _WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} holds no weights; expected one of {list(_WEIGHT_FILES)}")
    raw = load_state_dict(weights)  # format by content; pickles only through the restricted unpickler
    return vae_from_state_dict(vae_from_diffusers(raw), config, dtype=dtype, device=device)


def save_vae_folder(model: AutoencoderKL, path: str | Path) -> Path:
    """Write `model` as a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in vae_to_diffusers(model.state_dict()).items()}
    atomic_write_bytes(folder / _WEIGHT_FILES[0], safetensors_bytes(tensors))
    text = json.dumps(vae_config_to_diffusers(model.config), indent=2) + "\n"
    atomic_write_bytes(folder / "config.json", text.encode())
    return folder


def _read_single_file(path: Path) -> dict[str, Tensor]:
    """The autoencoder's tensors of a single file (all tensors when none carry the LDM prefix), read by
    content through the shared safe reader (`ddpm.io.checkpoint.load_state_dict`) whatever the suffix."""
    try:  # a whole SD file: read only the autoencoder's tensors (not the 4 GB of UNet and text encoder)
        return load_state_dict(path, prefix=SINGLE_FILE_PREFIX)
    except ValueError as error:
        if "no tensors named" not in str(error):
            raise
    return load_state_dict(path)  # a VAE-only file


def load_vae_single_file(
    source: str | Path | Mapping[str, Tensor],
    *,
    config: AutoencoderKLConfig | None = None,
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device = "cpu",
) -> AutoencoderKL:
    """Our `AutoencoderKL` from a Stable Diffusion single file (path or loaded dict); single files carry no
    config, so `config` defaults to `AutoencoderKLConfig.sd15()`."""
    if isinstance(source, Mapping):
        raw: Mapping[str, Tensor] = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        raw = _read_single_file(path)
    sd = {k: v for k, v in vae_from_single_file(raw).items() if not k.startswith(("loss.", "model_ema."))}
    return vae_from_state_dict(sd, config or AutoencoderKLConfig.sd15(), dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------- our own files
def save_autoencoder_file(
    path: str | Path, model: AutoencoderKL, *, meta: Mapping[str, Any] | None = None
) -> Path:
    """One self-describing `.safetensors` (weights under "vae.", config in the "ddpm" metadata)."""
    full = {"format": FORMAT, "version": VERSION, **dict(meta or {}), "autoencoder": model.config.to_dict()}
    return save_model_file(path, {MODEL_FILE_PREFIX + k: v for k, v in model.state_dict().items()}, full)


def load_autoencoder_file(
    path: str | Path, *, dtype: torch.dtype | None = torch.float32, device: str | torch.device = "cpu"
) -> tuple[AutoencoderKL, dict[str, Any]]:
    """(model, metadata) from a file written by `save_autoencoder_file` (or any model file with a VAE)."""
    tensors, meta = load_model_file(path)
    if "autoencoder" not in meta:
        raise ValueError(f"{path} holds no autoencoder (its metadata has no 'autoencoder' config)")
    config = AutoencoderKLConfig.from_dict(meta["autoencoder"])
    sd = {k[len(MODEL_FILE_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_FILE_PREFIX)}
    return vae_from_state_dict(sd, config, dtype=dtype, device=device), meta
