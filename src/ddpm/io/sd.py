"""Stable Diffusion 1.x checkpoints into our modules and back: the original single file (`.ckpt` or
`.safetensors`) and the diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
`tokenizer/`, `scheduler/`). The format is found by content (`ddpm.io.checkpoint`), keys are renamed by
`ddpm.io.keymaps`, configs translated by `ddpm.io.diffusers_configs` and read from shapes by
`ddpm.io.sd_layout`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor, nn

from ..models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from ..models.text_encoder import CLIPTextConfig, CLIPTextModel
from ..models.unet import UNet, UNetConfig
from ..text.clip_tokenizer import CLIPTokenizer
from .atomic import atomic_write, atomic_write_bytes
from .checkpoint import detect_format, load_state_dict, read_safetensors_header
from .diffusers_configs import (
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    vae_config_from_diffusers,
    vae_config_to_diffusers,
)
from .keymaps import (
    SINGLE_FILE,
    diffusers_unet_state_dict,
    ema_key,
    strip_prefix,
    text_keys,
    unet_to_diffusers,
    vae_conv_attention,
    vae_from_diffusers,
    vae_to_diffusers,
)
from .model_file import file_hash
from .sd_layout import (
    SD2_CONTEXT,
    SchedulerConfig,
    foreign_checkpoint_cause,
    infer_text_config,
    infer_unet_config,
    infer_vae_config,
    mismatch_error,
)

__all__ = [
    "StableDiffusionModels",
    "load_stable_diffusion",
    "single_file_state_dict",
    "save_single_file",
    "save_diffusers_folder",
    "write_safetensors",
    "plain_tensors",
]

SCHEDULER_META_KEY = "ddpm.scheduler"
# What a single file's shapes cannot show (configs that differ from what they give, a sample size other than
# 64), with the scheduler settings: one entry in place of SCHEDULER_META_KEY, so files stay reproducible.
SETTINGS_META_KEY = "ddpm.sd_settings"
SD1_SAMPLE_SIZE = 64  # the latent side SD 1.x UNets are trained at (512 pixels)
_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionImg2ImgPipeline")
_UNET_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
               "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
_TEXT_FILES = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")


@dataclass
class StableDiffusionModels:
    """The parts of a Stable Diffusion 1.x model, as our modules, with the settings they came with."""

    unet: UNet
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerConfig
    source_format: str  # "single_file" or "diffusers_folder"
    model_hash: str  # sha256 prefix: of the file, or of the folder's weight files
    source_dtype: torch.dtype = torch.float32  # how the UNet weights were stored (often float16)
    sample_size: int = SD1_SAMPLE_SIZE  # latent side the UNet was trained at (diffusers' `sample_size`)

    @property
    def unet_config(self) -> UNetConfig:
        return self.unet.config

    @property
    def vae_config(self) -> AutoencoderKLConfig:
        return self.vae.config

    @property
    def text_config(self) -> CLIPTextConfig:
        return self.text_encoder.config


# -------------------------------------------------------------------------------------------- loading
def load_stable_diffusion(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    prefer_ema: bool = True,
    prediction: str | None = None,
    unet_config: UNetConfig | None = None,
    vae_config: AutoencoderKLConfig | None = None,
    text_config: CLIPTextConfig | None = None,
    nonfinite: str = "warn",
) -> StableDiffusionModels:
    """An SD 1.x model from a single file or a diffusers folder, found by content.

    `dtype` (default float32) is what the weights are cast to, whatever the file stores (often fp16).
    `prediction` ("eps", "v", "x0") overrides the scheduler's, since weights cannot show it. The configs
    default to what the file says (folder) or its tensor shapes show (single file).
    """
    path = Path(path)
    dtype = torch.float32 if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if path.is_dir():
        models = _load_folder(path, dtype=dtype, device=device, nonfinite=nonfinite,
                              configs=(unet_config, vae_config, text_config))
    elif path.is_file():
        models = _load_single_file(path, dtype=dtype, device=device, prefer_ema=prefer_ema,
                                   nonfinite=nonfinite, configs=(unet_config, vae_config, text_config))
    else:
        raise FileNotFoundError(f"{str(path)!r} is neither a checkpoint file nor a diffusers folder")
    if prediction is not None:
        models.scheduler = SchedulerConfig.from_dict({**models.scheduler.to_dict(), "prediction": prediction})
    return models


def _load_single_file(
    path: Path, *, dtype: torch.dtype, device: str | torch.device, prefer_ema: bool, nonfinite: str,
    configs: tuple[Any, Any, Any],
) -> StableDiffusionModels:
    raw = load_state_dict(path, nonfinite=nonfinite)
    cause = foreign_checkpoint_cause(list(raw))
    if cause is not None:
        raise ValueError(f"{path} is not a Stable Diffusion 1.x checkpoint: {cause}")
    unet_sd = strip_prefix(raw, SINGLE_FILE.unet)
    if prefer_ema:
        unet_sd = _ema_weights(unet_sd, raw, source=str(path))
    vae_sd = {k: v for k, v in strip_prefix(raw, SINGLE_FILE.vae).items() if not k.startswith("loss.")}
    text_sd = text_keys(strip_prefix(raw, SINGLE_FILE.text_encoder))
    source = str(path)
    parts = {"VAE": (vae_sd, SINGLE_FILE.vae), "text encoder": (text_sd, SINGLE_FILE.text_encoder)}
    for component, (sd, prefix) in parts.items():
        if not sd:
            raise ValueError(f"{source}: the {component} is missing from this checkpoint (no `{prefix}*` "
                             "keys). Use a full SD 1.x checkpoint or a diffusers folder.")
    settings = _single_file_settings(path)
    unet_config, vae_config, text_config = configs
    unet_config = unet_config or settings.get("unet") or _infer(infer_unet_config, unet_sd, "UNet", source)
    vae_config = vae_config or settings.get("vae") or _infer(infer_vae_config, vae_sd, "VAE", source)
    text_config = text_config or settings.get("text_encoder") or _infer(
        infer_text_config, text_sd, "text encoder", source
    )
    kw = dict(dtype=dtype, device=device, source=source)
    return StableDiffusionModels(
        unet=_build(UNet, unet_config, unet_sd, "UNet", **kw),
        vae=_build(AutoencoderKL, vae_config, vae_conv_attention(vae_sd), "VAE", **kw),
        text_encoder=_build(CLIPTextModel, text_config, text_sd, "text encoder", **kw),
        tokenizer=CLIPTokenizer.from_bpe_file(),
        scheduler=settings["scheduler"],
        source_format="single_file",
        model_hash=file_hash(path),
        source_dtype=_stored_dtype(unet_sd),
        sample_size=settings["sample_size"],
    )


_CONFIG_CLASSES = {"unet": UNetConfig, "vae": AutoencoderKLConfig, "text_encoder": CLIPTextConfig}


def _single_file_settings(path: Path) -> dict[str, Any]:
    """What a single file's metadata records: "scheduler", "sample_size" and any carried configs."""
    meta: dict[str, str] = {}
    if detect_format(path) == "safetensors":
        meta = read_safetensors_header(path).get("__metadata__") or {}
    try:
        if SETTINGS_META_KEY in meta:
            raw = json.loads(meta[SETTINGS_META_KEY])
        else:
            raw = {"scheduler": json.loads(meta.get(SCHEDULER_META_KEY, "{}"))}
        out: dict[str, Any] = {"scheduler": SchedulerConfig.from_dict(raw.get("scheduler") or {}),
                               "sample_size": int(raw.get("sample_size") or SD1_SAMPLE_SIZE)}
        for name, cls in _CONFIG_CLASSES.items():
            if raw.get(name) is not None:
                out[name] = cls.from_dict(raw[name])
    except (ValueError, TypeError, AttributeError) as e:  # JSON and config errors
        raise ValueError(f"{path}: its ddpm settings metadata is damaged ({e}); convert the model again") \
            from e
    return out


def _load_folder(
    root: Path, *, dtype: torch.dtype, device: str | torch.device, nonfinite: str,
    configs: tuple[Any, Any, Any],
) -> StableDiffusionModels:
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{root} is not a diffusers folder: it has no model_index.json")
    index = _read_json(index_file)
    pipeline = index.get("_class_name", "")
    if "XL" in pipeline or "text_encoder_2" in index:
        raise ValueError(f"{root} is an SDXL pipeline ({pipeline}), which is not supported yet")
    if pipeline == "StableDiffusionUpscalePipeline":
        raise ValueError(f"{root} is the SD x4 upscaler: load it with ddpm.pipelines.StableDiffusionUpscale "
                         "(ddpm upscale), not as a text-to-image model")
    if pipeline not in _PIPELINES:
        raise ValueError(f"{root} holds a {pipeline or 'unknown'} pipeline; supported: {list(_PIPELINES)}")
    for part in ("unet", "vae", "text_encoder"):
        if not (root / part / "config.json").is_file():
            raise FileNotFoundError(f"{root} lacks {part}/config.json: the {part} component is missing")
    source = str(root)
    unet_cfg_json = _read_json(root / "unet" / "config.json")
    sample_size = unet_cfg_json.get("sample_size")
    if unet_cfg_json.get("cross_attention_dim") == SD2_CONTEXT:
        raise ValueError(f"{root}: cross-attention width {SD2_CONTEXT}: this is an SD 2.x checkpoint, "
                         "which is not supported yet")
    unet_config, vae_config, text_config = configs
    unet_config = unet_config or unet_config_from_diffusers(unet_cfg_json)
    vae_config = vae_config or vae_config_from_diffusers(_read_json(root / "vae" / "config.json"))
    text_json = _read_json(root / "text_encoder" / "config.json")
    text_config = text_config or CLIPTextConfig.from_transformers(text_json)
    files = [_weights_file(root / "unet", _UNET_FILES), _weights_file(root / "vae", _UNET_FILES),
             _weights_file(root / "text_encoder", _TEXT_FILES)]
    unet_raw, vae_raw, text_raw = (load_state_dict(f, nonfinite=nonfinite) for f in files)
    unet_sd = _convert(diffusers_unet_state_dict, unet_raw, unet_config, "UNet", files[0])
    vae_sd = _convert(lambda sd, _: vae_from_diffusers(sd), vae_raw, vae_config, "VAE", files[1])
    text_sd = text_keys(text_raw)
    if any((root / "tokenizer" / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        tokenizer = CLIPTokenizer.from_folder(root / "tokenizer")
    else:
        warnings.warn(f"{root} has no tokenizer/ folder; using CLIP's packaged vocabulary", stacklevel=3)
        tokenizer = CLIPTokenizer.from_bpe_file()
    scheduler_file = root / "scheduler" / "scheduler_config.json"
    scheduler = SchedulerConfig.from_diffusers(_read_json(scheduler_file)) if scheduler_file.is_file() \
        else SchedulerConfig()
    digest = hashlib.sha256("".join(file_hash(f, full=True) for f in files).encode()).hexdigest()[:10]
    kw = dict(dtype=dtype, device=device, source=source)
    return StableDiffusionModels(
        unet=_build(UNet, unet_config, unet_sd, "UNet", **kw),
        vae=_build(AutoencoderKL, vae_config, vae_sd, "VAE", **kw),
        text_encoder=_build(CLIPTextModel, text_config, text_sd, "text encoder", **kw),
        tokenizer=tokenizer,
        scheduler=scheduler,
        source_format="diffusers_folder",
        model_hash=digest,
        source_dtype=_stored_dtype(unet_raw),
        sample_size=sample_size if isinstance(sample_size, int) and sample_size > 0 else SD1_SAMPLE_SIZE,
    )


# ------------------------------------------------------------------------------------------- helpers
def _ema_weights(unet_sd: dict[str, Tensor], raw: Mapping[str, Tensor], *, source: str) -> dict[str, Tensor]:
    """The UNet's EMA weights (`model_ema.diffusion_model…`, dots removed) if the file has all of them."""
    names = {k: ema_key(k) for k in unet_sd}
    present = [k for k, e in names.items() if e in raw]
    if not present:
        return unet_sd
    if len(present) < len(names):
        warnings.warn(f"{source} has EMA weights for only {len(present)} of {len(names)} UNet tensors; "
                      "using the non-EMA weights", RuntimeWarning, stacklevel=4)
        return unet_sd
    return {k: raw[names[k]] for k in unet_sd}


def _stored_dtype(sd: Mapping[str, Tensor]) -> torch.dtype:
    """The floating dtype most of `sd`'s elements are stored in."""
    counts: dict[torch.dtype, int] = {}
    for v in sd.values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def _infer(fn: Any, sd: Mapping[str, Tensor], component: str, source: str) -> Any:
    try:
        return fn(sd)
    except (ValueError, KeyError, StopIteration) as e:
        detail = str(e) if isinstance(e, ValueError) else f"no {e} key"
        raise ValueError(f"{source}: cannot read the {component} config from its weights: {detail}") from e


def _convert(fn: Any, sd: Mapping[str, Tensor], config: Any, component: str, file: Path) -> dict[str, Tensor]:
    try:
        return fn(sd, config)
    except ValueError as e:
        raise ValueError(f"{file}: the {component} weights do not fit its config.json: {e}") from e


def _build(
    cls: type[nn.Module], config: Any, sd: Mapping[str, Tensor], component: str, *, dtype: torch.dtype,
    device: str | torch.device, source: str,
) -> Any:
    """`cls(config)` holding `sd`, after one key/shape comparison that explains any mismatch."""
    with torch.device("meta"):
        module = cls(config)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in sd.items()}
    error = mismatch_error(component, expected, found, source=source)
    if error is not None:
        raise error
    module.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                           strict=True, assign=True)
    return module.to(device=device, dtype=dtype).eval()


def _weights_file(folder: Path, names: tuple[str, ...]) -> Path:
    """The first of `names` present in `folder` (safetensors before .bin)."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} holds no weights; expected one of {list(names)}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object")
    return data


# -------------------------------------------------------------------------------------------- writing
def single_file_state_dict(unet: UNet, vae: AutoencoderKL, text_encoder: CLIPTextModel) -> dict[str, Tensor]:
    """The SD 1.x single-file layout of the three modules' weights (works on the meta device too)."""
    parts = {SINGLE_FILE.unet: unet, SINGLE_FILE.vae: vae, SINGLE_FILE.text_encoder: text_encoder}
    return {prefix + k: v for prefix, m in parts.items() for k, v in m.state_dict().items()}


def save_single_file(
    models: StableDiffusionModels, path: str | Path, *, dtype: torch.dtype | None = None
) -> Path:
    """Write `models` as one SD 1.x `.safetensors` single file; its metadata holds the scheduler settings
    and whatever the tensor shapes cannot show (see SETTINGS_META_KEY), so the file loads back as it was."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"single files are written as .safetensors; got {str(path)!r}")
    tensors = plain_tensors(single_file_state_dict(models.unet, models.vae, models.text_encoder), dtype)
    meta = _single_file_meta(models)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, tensors, meta)
    return path


def _single_file_meta(models: StableDiffusionModels) -> dict[str, str]:
    """One metadata entry: the scheduler alone when shapes give back every config, else SETTINGS_META_KEY."""
    settings: dict[str, Any] = {"scheduler": models.scheduler.to_dict()}
    if models.sample_size != SD1_SAMPLE_SIZE:
        settings["sample_size"] = models.sample_size
    parts = (("unet", infer_unet_config, models.unet.state_dict(), models.unet.config),
             ("vae", infer_vae_config, models.vae.state_dict(), models.vae.config),
             ("text_encoder", infer_text_config, text_keys(models.text_encoder.state_dict()),
              models.text_encoder.config))
    for name, infer, sd, config in parts:
        try:
            readable = infer(sd) == config
        except (ValueError, KeyError, StopIteration):
            readable = False
        if not readable:
            settings[name] = config.to_dict()
    if len(settings) == 1:
        return {SCHEDULER_META_KEY: json.dumps(settings["scheduler"], sort_keys=True)}
    return {SETTINGS_META_KEY: json.dumps(settings, sort_keys=True)}


def save_diffusers_folder(
    models: StableDiffusionModels, path: str | Path, *, dtype: torch.dtype | None = None
) -> Path:
    """Write `models` as a diffusers `StableDiffusionPipeline` folder (safetensors weights, JSON configs)."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} exists and is not a folder")
    unet_sd = unet_to_diffusers(models.unet.state_dict(), models.unet.config)
    vae_sd = vae_to_diffusers(models.vae.state_dict())
    parts: dict[str, tuple[str, dict[str, Any], dict[str, Tensor]]] = {
        "unet": ("diffusion_pytorch_model.safetensors",
                 {**unet_config_to_diffusers(models.unet.config), "sample_size": models.sample_size},
                 unet_sd),
        "vae": ("diffusion_pytorch_model.safetensors", vae_config_to_diffusers(models.vae.config), vae_sd),
        "text_encoder": ("model.safetensors",
                         {"architectures": ["CLIPTextModel"], **models.text_encoder.config.to_transformers()},
                         dict(models.text_encoder.state_dict())),
    }
    for name, (weights, config, sd) in parts.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / weights, plain_tensors(sd, dtype), {"format": "pt"})
        _write_json(folder / "config.json", config)
    _write_tokenizer(models.tokenizer, root / "tokenizer")
    _write_json(root / "scheduler" / "scheduler_config.json", models.scheduler.to_diffusers())
    _write_json(root / "model_index.json", {
        "_class_name": "StableDiffusionPipeline" if models.unet.config.in_channels == 4
        else "StableDiffusionInpaintPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", models.scheduler.to_diffusers()["_class_name"]],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    })
    return root


def write_safetensors(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str]) -> None:
    """Write a .safetensors file atomically (`ddpm.io.atomic`), streaming from the tensors.

    Keep `metadata` to one entry where files must be byte-reproducible: safetensors writes several in
    hash order."""
    with atomic_write(path) as tmp:
        try:
            save_file(dict(tensors), str(tmp), metadata=metadata)
        except SafetensorError as e:  # an unwritable folder or a full disk, in safetensors' own error type
            raise OSError(f"could not write {path}: {e}") from e


def plain_tensors(sd: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """CPU, contiguous tensors that share no storage (safetensors refuses shared storage); floating ones
    cast to `dtype` if given. Copies only where needed."""
    out = {}
    seen: set[int] = set()
    for k, v in sd.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        v = v.contiguous()
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen:
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _write_tokenizer(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """vocab.json, merges.txt and the special-token configs (as CLIPTokenizer.from_folder reads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = dict(sorted(tokenizer.encoder.items(), key=lambda item: item[1]))
    atomic_write_bytes(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    merges = sorted(tokenizer.bpe.ranks.items(), key=lambda item: item[1])
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for (a, b), _ in merges)
    atomic_write_bytes(folder / "merges.txt", text.encode("utf-8"))

    def entry(token: str) -> dict[str, Any]:
        return {"content": token, "lstrip": False, "normalized": tokenizer.specials.get(token, False),
                "rstrip": False, "single_word": False}

    roles = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
             "pad_token": tokenizer.pad_token, "unk_token": tokenizer.unk_token}
    _write_json(folder / "special_tokens_map.json", {role: entry(t) for role, t in roles.items()})
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": tokenizer.model_max_length,
        "do_lower_case": True, "errors": "replace", "add_prefix_space": False,
        **{role: entry(t) for role, t in roles.items()},
    })
