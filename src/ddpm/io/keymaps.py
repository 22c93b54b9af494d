"""Where each model's weights sit in each file layout: the one prefix table and one key table per model.

Our parameter names are the LDM / Stable Diffusion single-file names, so a single file is our keys under a
`SINGLE_FILE` prefix and our model files are our keys under a `MODEL_FILE` prefix. The diffusers layout
names modules differently: a `Table` maps each of our module paths to its diffusers path and the renaming
of the leaf modules under it (None: they keep their names). It is written once, ours -> diffusers, and
inverted for the other direction; a key is renamed at its longest module path the table lists.

UNet (`unet_table`; n = num_res_blocks, i and j the diffusers block and resnet indices):

| ours                                      | diffusers                                         |
| ----------------------------------------- | ------------------------------------------------- |
| `input_blocks.0.0`, `out.0`, `out.2`      | `conv_in`, `conv_norm_out`, `conv_out`            |
| `time_embed.{0,2}`, `label_emb`           | `time_embedding.linear_{1,2}`, `class_embedding`  |
| `input_blocks.(1 + i(n+1) + j).{0,1}`     | `down_blocks.i.{resnets,attentions}.j`            |
| `input_blocks.((i+1)(n+1)).0.op`          | `down_blocks.i.downsamplers.0.conv`               |
| `middle_block.{0,1,2}`                    | `mid_block.{resnets.0, attentions.0, resnets.1}`  |
| `output_blocks.(i(n+1) + j).{0,1}`        | `up_blocks.i.{resnets,attentions}.j`              |
| `output_blocks.(i(n+1) + n).{1 or 2}.conv`| `up_blocks.i.upsamplers.0.conv`                   |

Resnet leaves are `_UNET_RESNET`, pixel-attention leaves `_PIXEL_ATTENTION`; transformer blocks keep their
names. Ours stacks the pixel attention's q, k, v rows in one `qkv` and has a "null" class row diffusers lacks.

VAE (`vae_table`, L levels): `{en,de}coder.norm_out` is `conv_norm_out`; `encoder.down.i.{block.j,
downsample.conv}` is `encoder.down_blocks.i.{resnets.j, downsamplers.0.conv}`; `decoder.up.(L-1-i)` is
`decoder.up_blocks.i` (`upsample` -> `upsamplers.0`); `mid.{block_1, attn_1, block_2}` is
`mid_block.{resnets.0, attentions.0, resnets.1}`, with leaves `_VAE_RESNET` and `_VAE_ATTENTION`. LDM
stores the attention projections as 1x1 convs `[C, C, 1, 1]`, diffusers as Linear weights `[C, C]`.

Older diffusers files name attention leaves `query/key/value/proj_attn`; those read too. The text encoder
needs no table: our names are the transformers names (`text_keys`).

CLIP (`CLIP_PARTS`): a transformers CLIP file (`CLIPModel`, `CLIPVisionModelWithProjection`,
`CLIPTextModelWithProjection`) has up to five top-level parts; each sits under one module of our
`models.clip_vision.CLIPModel` and keeps the transformers names below it:

| transformers          | ours                          |
| --------------------- | ----------------------------- |
| `text_model.`         | `text.text_model.`            |
| `text_projection.`    | `text_projection.`            |
| `vision_model.`       | `vision.vision_model.`        |
| `visual_projection.`  | `vision.visual_projection.`   |
| `logit_scale`         | `logit_scale`                 |
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from ..models.unet import UNetConfig

__all__ = [
    "Prefixes",
    "MODEL_FILE",
    "SINGLE_FILE",
    "SINGLE_FILE_EMA",
    "VAE_MODULES",
    "Table",
    "add_prefix",
    "strip_prefix",
    "ema_key",
    "invert",
    "rename",
    "unet_table",
    "vae_table",
    "OPEN_CLIP_PREFIX",
    "open_clip_text_keys",
    "unet_to_diffusers",
    "diffusers_unet_state_dict",
    "vae_to_diffusers",
    "vae_from_diffusers",
    "vae_conv_attention",
    "vae_to_single_file",
    "vae_from_single_file",
    "text_keys",
    "CLIP_PARTS",
    "clip_from_transformers",
    "clip_to_transformers",
]


class Prefixes(NamedTuple):
    """The key prefix of each component's weights in one file layout."""

    unet: str
    vae: str
    text_encoder: str


#                     UNet                      VAE                   text encoder
MODEL_FILE = Prefixes("unet.", "vae.", "text_encoder.")
SINGLE_FILE = Prefixes("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")
SINGLE_FILE_EMA = "model_ema.diffusion_model"  # + a UNet key with its dots removed
VAE_MODULES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")  # a VAE-only file's top level

# Our module path -> (diffusers module path, our leaf module -> theirs, or None where the names are equal).
Table = dict[str, tuple[str, Mapping[str, str] | None]]

_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_PIXEL_ATTENTION = {"norm": "group_norm", "qkv": "to_qkv", "proj_out": "to_out.0"}  # to_qkv: q, k, v stacked
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "nin_shortcut": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_OLD_DIFFUSERS = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_QKV = ("to_q", "to_k", "to_v")


# ------------------------------------------------------------------------------------------- prefixes
def add_prefix(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """`sd` with `prefix` before every key."""
    return {prefix + k: v for k, v in sd.items()}


def strip_prefix(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of `sd` under `prefix`, without it."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def ema_key(key: str) -> str:
    """The name an LDM checkpoint gives the EMA copy of UNet parameter `key` (our name): dots removed."""
    return SINGLE_FILE_EMA + key.replace(".", "")


# ------------------------------------------------------------------------------------------ the engine
def invert(table: Table, aliases: Mapping[str, str] | None = None) -> Table:
    """The table of the other direction; `aliases` (other leaf name -> a renamed leaf) read as that leaf."""
    out: Table = {}
    for ours, (theirs, leaves) in table.items():
        back = None if leaves is None else {t: o for o, t in leaves.items()}
        if back is not None and aliases:
            back.update({old: back[new] for old, new in aliases.items() if new in back})
        out[theirs] = (ours, back)
    return out


def rename(keys: Iterable[str], table: Table, *, what: str) -> dict[str, str]:
    """Each key -> its name in the layout `table` leads to; ValueError `what: [keys]` for the unplaceable."""
    out: dict[str, str] = {}
    unknown = []
    for key in keys:
        parts = key.split(".")
        cut = next((c for c in range(len(parts) - 1, 0, -1) if ".".join(parts[:c]) in table), 0)
        head, leaves = table.get(".".join(parts[:cut]), ("", None))
        module = ".".join(parts[cut:-1])
        if not cut or (leaves is not None and module not in leaves):
            unknown.append(key)
            continue
        out[key] = ".".join(p for p in (head, module if leaves is None else leaves[module], parts[-1]) if p)
    if unknown:
        raise ValueError(f"{what}: {unknown[:8]}{' …' if len(unknown) > 8 else ''}")
    return out


# ----------------------------------------------------------------------------------------------- UNet
def unet_table(cfg: UNetConfig) -> Table:
    """Our UNet module paths -> diffusers ones, for every block of `cfg` (the module docstring's table)."""
    n, levels = cfg.num_res_blocks, len(cfg.channel_mult)
    attn = [2**i in cfg.attention_resolutions for i in range(levels)]
    attention = _PIXEL_ATTENTION if cfg.context_dim is None else None
    t: Table = {
        "input_blocks.0.0": ("conv_in", None),
        "time_embed.0": ("time_embedding.linear_1", None),
        "time_embed.2": ("time_embedding.linear_2", None),
        "label_emb": ("class_embedding", None),
        "out.0": ("conv_norm_out", None),
        "out.2": ("conv_out", None),
        "middle_block.0": ("mid_block.resnets.0", _UNET_RESNET),
        "middle_block.1": ("mid_block.attentions.0", attention),
        "middle_block.2": ("mid_block.resnets.1", _UNET_RESNET),
    }
    idx = 1
    for i in range(levels):
        for j in range(n):
            t[f"input_blocks.{idx}.0"] = (f"down_blocks.{i}.resnets.{j}", _UNET_RESNET)
            if attn[i]:
                t[f"input_blocks.{idx}.1"] = (f"down_blocks.{i}.attentions.{j}", attention)
            idx += 1
        if i < levels - 1:
            t[f"input_blocks.{idx}.0.op"] = (f"down_blocks.{i}.downsamplers.0.conv", None)
            idx += 1
    for i in range(levels):
        level = levels - 1 - i
        for j in range(n + 1):
            idx = i * (n + 1) + j
            t[f"output_blocks.{idx}.0"] = (f"up_blocks.{i}.resnets.{j}", _UNET_RESNET)
            if attn[level]:
                t[f"output_blocks.{idx}.1"] = (f"up_blocks.{i}.attentions.{j}", attention)
            if j == n and level > 0:
                up = f"output_blocks.{idx}.{2 if attn[level] else 1}.conv"
                t[up] = (f"up_blocks.{i}.upsamplers.0.conv", None)
    return t


def unet_to_diffusers(state_dict: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """Our UNet state dict -> diffusers names (of a `UNet2DConditionModel`, or a `UNet2DModel`)."""
    names = rename(state_dict, unet_table(config), what="UNet keys with no place in the diffusers layout")
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = names[key]
        if key == "label_emb.weight":
            value = value[:-1]  # our "null" class row
        if ".to_qkv." in new:
            out.update({new.replace(".to_qkv.", f".{q}."): part for q, part in zip(_QKV, value.chunk(3))})
        else:
            out[new] = value
    return out


def diffusers_unet_state_dict(state_dict: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """A diffusers UNet state dict in our names for `config` (the inverse of `unet_to_diffusers`)."""
    sd = _stack_qkv(state_dict) if config.context_dim is None else dict(state_dict)
    names = rename(sd, invert(unet_table(config), _OLD_DIFFUSERS),
                   what="diffusers keys with no place in this UNet config")
    out = {names[k]: v for k, v in sd.items()}
    if "label_emb.weight" in out:  # diffusers has no "null" class row; ours is appended as zeros ("no class")
        w = out["label_emb.weight"]
        out["label_emb.weight"] = torch.cat([w, w.new_zeros(1, w.shape[1])])
    return out


def _stack_qkv(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Pixel attention's `to_q/to_k/to_v` (or `query/key/value`) stacked into one `to_qkv`, rows [q; k; v]."""
    out: dict[str, Tensor] = {}
    parts: dict[str, dict[int, Tensor]] = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        head, _, leaf = module.rpartition(".")
        leaf = _OLD_DIFFUSERS.get(leaf, leaf)
        if leaf in _QKV:
            parts.setdefault(f"{head}.to_qkv.{param}", {})[_QKV.index(leaf)] = value
        else:
            out[key] = value
    for key, found in parts.items():
        if sorted(found) != [0, 1, 2]:
            raise ValueError(f"attention {key.rsplit('.', 2)[0]} lacks one of its to_q, to_k, to_v "
                             f"{key.rsplit('.', 1)[1]}s in the diffusers state dict")
        out[key] = torch.cat([found[0], found[1], found[2]])
    return out


# ------------------------------------------------------------------------------------------------ VAE
def vae_table(levels: int, blocks: int) -> Table:
    """Our AutoencoderKL module paths -> diffusers ones, for `levels` levels of up to `blocks` resnets."""
    t: Table = {"quant_conv": ("quant_conv", None), "post_quant_conv": ("post_quant_conv", None)}
    for part in ("encoder", "decoder"):
        t[f"{part}.conv_in"] = (f"{part}.conv_in", None)
        t[f"{part}.conv_out"] = (f"{part}.conv_out", None)
        t[f"{part}.norm_out"] = (f"{part}.conv_norm_out", None)
        t[f"{part}.mid.block_1"] = (f"{part}.mid_block.resnets.0", _VAE_RESNET)
        t[f"{part}.mid.attn_1"] = (f"{part}.mid_block.attentions.0", _VAE_ATTENTION)
        t[f"{part}.mid.block_2"] = (f"{part}.mid_block.resnets.1", _VAE_RESNET)
    for i in range(levels):
        up = levels - 1 - i
        t[f"encoder.down.{i}.downsample.conv"] = (f"encoder.down_blocks.{i}.downsamplers.0.conv", None)
        t[f"decoder.up.{up}.upsample.conv"] = (f"decoder.up_blocks.{i}.upsamplers.0.conv", None)
        for j in range(blocks):
            t[f"encoder.down.{i}.block.{j}"] = (f"encoder.down_blocks.{i}.resnets.{j}", _VAE_RESNET)
            t[f"decoder.up.{up}.block.{j}"] = (f"decoder.up_blocks.{i}.resnets.{j}", _VAE_RESNET)
    return t


# Where a VAE state dict shows its levels and resnets: (decoder level index, resnet index) per layout.
_VAE_SIZES = {"ours": (r"^decoder\.up\.(\d+)\.", r"\.(?:down|up)\.\d+\.block\.(\d+)\."),
              "diffusers": (r"^decoder\.up_blocks\.(\d+)\.", r"_blocks\.\d+\.resnets\.(\d+)\.")}


def _vae_table_for(keys: Iterable[str], layout: str) -> Table:
    """`vae_table` for as many levels and resnets as the keys (in `layout`) show."""
    keys = list(keys)

    def count(pattern: str) -> int:
        found = [int(m.group(1)) for k in keys if (m := re.search(pattern, k))]
        if not found:
            raise ValueError(f"no key matches {pattern!r}: this is not an AutoencoderKL state dict")
        return max(found) + 1

    return vae_table(*(count(p) for p in _VAE_SIZES[layout]))


def _attention_projection(key: str) -> bool:
    """Whether our VAE key is a q/k/v/proj_out weight (1x1 conv in LDM, Linear in diffusers)."""
    return ".attn_1." in key and ".attn_1.norm." not in key


def vae_to_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our (LDM) state dict -> the current diffusers `AutoencoderKL` names (`to_q`… as Linear weights)."""
    names = rename(state_dict, _vae_table_for(state_dict, "ours"),
                   what="keys that are not AutoencoderKL parameters")
    return {names[k]: (v[:, :, 0, 0] if v.ndim == 4 and _attention_projection(k) else v).contiguous()
            for k, v in state_dict.items()}


def vae_from_diffusers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers `AutoencoderKL` state dict -> ours (LDM single-file names without the prefix)."""
    names = rename(state_dict, invert(_vae_table_for(state_dict, "diffusers"), _OLD_DIFFUSERS),
                   what="diffusers AutoencoderKL keys with no place in ours")
    return vae_conv_attention({names[k]: v for k, v in state_dict.items()})


def vae_conv_attention(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our VAE state dict with Linear `[C, C]` attention projections (as some files have) as 1x1 convs."""
    return {k: v[:, :, None, None] if v.ndim == 2 and _attention_projection(k) else v for k, v in sd.items()}


def vae_to_single_file(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> the Stable Diffusion single-file keys (`first_stage_model.` + our names)."""
    return add_prefix(state_dict, SINGLE_FILE.vae)


def vae_from_single_file(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our VAE state dict from a whole SD file (keys under `SINGLE_FILE.vae`) or a VAE-only one."""
    prefixed = strip_prefix(state_dict, SINGLE_FILE.vae)
    if prefixed:
        return prefixed
    found = {k: v for k, v in state_dict.items() if k.startswith(VAE_MODULES)}
    if not found:
        raise ValueError(
            f"no autoencoder weights found: expected keys under {SINGLE_FILE.vae!r} (a Stable Diffusion "
            f"single file) or 'encoder.'/'decoder.' (a VAE-only file); its first keys are "
            f"{list(state_dict)[:4]}"
        )
    return found


# ------------------------------------------------------------------------------------------ text encoder
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x single files: the OpenCLIP text transformer
_OPEN_CLIP_LEAVES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
                     "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}


def open_clip_text_keys(sd: Mapping[str, Tensor], *, skip_last: int = 1) -> dict[str, Tensor]:
    """An OpenCLIP text tower (keys under `OPEN_CLIP_PREFIX`, stripped) in our = transformers' names,
    without its last `skip_last` blocks (SD 2 reads the penultimate layer's states, then `ln_final`):
    `resblocks.i.attn.in_proj_*` rows [q; k; v] become `q_proj`, `k_proj`, `v_proj`; `text_projection`
    and `logit_scale` (unused by diffusion) are dropped."""
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))})
    if not blocks or "token_embedding.weight" not in sd or "ln_final.weight" not in sd:
        raise ValueError("the OpenCLIP text weights lack token_embedding, ln_final or transformer.resblocks")
    keep = blocks[: len(blocks) - skip_last]
    out = {"text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "text_model.final_layer_norm.weight": sd["ln_final.weight"],
           "text_model.final_layer_norm.bias": sd["ln_final.bias"]}
    for i in keep:
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for param in ("weight", "bias"):
            for theirs, ours in _OPEN_CLIP_LEAVES.items():
                out[f"{dst}{ours}.{param}"] = sd[f"{src}{theirs}.{param}"]
            q, k, v = sd[f"{src}attn.in_proj_{param}"].chunk(3)
            out.update({f"{dst}self_attn.{n}_proj.{param}": t for n, t in zip("qkv", (q, k, v))})
    return out


def text_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Text-encoder keys with the `text_model.` level (older writers omit it), without `position_ids`."""
    out = {}
    for k, v in sd.items():
        key = k if k.startswith("text_model.") else "text_model." + k
        if key != "text_model.embeddings.position_ids":
            out[key] = v
    return out


# ------------------------------------------------------------------------------------------------- CLIP
CLIP_PARTS = {"text_model.": "text.text_model.", "text_projection.": "text_projection.",
              "vision_model.": "vision.vision_model.", "visual_projection.": "vision.visual_projection.",
              "logit_scale": "logit_scale"}
_CLIP_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def _move_parts(sd: Mapping[str, Tensor], parts: Mapping[str, str], *, what: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in sd.items():
        head = next((p for p in parts if key.startswith(p)), None)
        if head is None:
            unknown.append(key)
        else:
            out[parts[head] + key[len(head):]] = value
    if unknown:
        raise ValueError(f"{what}: {unknown[:8]}{' …' if len(unknown) > 8 else ''}")
    return out


def clip_from_transformers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers CLIP state dict (whole model or one tower) in our `CLIPModel` names, without the
    `position_ids` buffers older files carry."""
    kept = {k: v for k, v in sd.items() if k not in _CLIP_BUFFERS}
    return _move_parts(kept, CLIP_PARTS, what="keys that are not parts of a transformers CLIP model")


def clip_to_transformers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our `CLIPModel` state dict (or a part of it) in the transformers `CLIPModel` names."""
    back = {ours: theirs for theirs, ours in CLIP_PARTS.items()}
    return _move_parts(sd, back, what="keys that are not parts of our CLIPModel")
