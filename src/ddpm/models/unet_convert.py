"""Weights of the diffusers UNets (`UNet2DConditionModel`, `UNet2DModel`) in our `UNet` layout.

Our module names are the LDM / Stable Diffusion single-file names (`input_blocks.N.M…`), so a
single-file checkpoint loads by stripping `model.diffusion_model.`; the diffusers layout
(`down_blocks.i.resnets.j…`) needs the renaming below. Nothing here imports diffusers: the functions
read a config mapping and a state dict.

| diffusers                                   | ours                                              |
| ------------------------------------------- | ------------------------------------------------- |
| `conv_in`, `conv_norm_out`, `conv_out`       | `input_blocks.0.0`, `out.0`, `out.2`               |
| `time_embedding.linear_{1,2}`                | `time_embed.{0,2}`                                 |
| `class_embedding`                            | `label_emb` (plus a zero "null" row)               |
| `down_blocks.i.{resnets,attentions}.j`       | `input_blocks.(1 + i(n+1) + j).{0,1}`              |
| `down_blocks.i.downsamplers.0.conv`          | `input_blocks.((i+1)(n+1)).0.op`                   |
| `mid_block.{resnets.0, attentions.0, resnets.1}` | `middle_block.{0,1,2}`                         |
| `up_blocks.i.{resnets,attentions}.j`         | `output_blocks.(i(n+1) + j).{0,1}`                 |
| `up_blocks.i.upsamplers.0.conv`              | `output_blocks.(i(n+1) + n).{1 or 2}.conv`         |
| pixel attention `group_norm, to_q|to_k|to_v, to_out.0` | `norm, qkv (rows [q; k; v]), proj_out` |

with n = num_res_blocks. Inside resnets `norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut` become
`in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection`; transformer blocks
keep their names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .unet import UNet, UNetConfig

__all__ = ["unet_config_from_diffusers", "diffusers_unet_state_dict", "unet_from_diffusers"]

RESNET_LEAVES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# Pixel self-attention; `query`/`key`/`value`/`proj_attn` are the names of older diffusers checkpoints.
_ATTENTION_LEAVES = {"group_norm": "norm", "to_out.0": "proj_out", "proj_attn": "proj_out"}
_QKV = {"to_q": 0, "to_k": 1, "to_v": 2, "query": 0, "key": 1, "value": 2}

_DOWN_ATTN = {"CrossAttnDownBlock2D": True, "AttnDownBlock2D": True, "DownBlock2D": False}
_UP_ATTN = {"CrossAttnUpBlock2D": True, "AttnUpBlock2D": True, "UpBlock2D": False}
_MID = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")
# Options of the diffusers configs our UNet does not express, with the value it must have.
_REQUIRED = {
    "act_fn": "silu",
    "time_embedding_type": "positional",
    "center_input_sample": False,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "mid_block_scale_factor": 1,
    "class_embed_type": None,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "time_embedding_dim": None,
    "time_cond_proj_dim": None,
    "timestep_post_act": None,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "add_attention": True,
    "class_embeddings_concat": False,
    "cross_attention_norm": None,
    "attention_type": "default",
    "reverse_transformer_layers_per_block": None,
}


def _per_block(value: Any, n: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_config_from_diffusers(config: Mapping[str, Any]) -> UNetConfig:
    """Our `UNetConfig` for a diffusers `UNet2DConditionModel` / `UNet2DModel` config (its `config.json`)."""
    c = dict(config)
    if "only_cross_attention" in c:  # a bool or one bool per block
        c["only_cross_attention"] = any(_per_block(c["only_cross_attention"], 1))
    unsupported = {k: c[k] for k, want in _REQUIRED.items() if k in c and c[k] != want}
    if unsupported:
        raise ValueError(f"diffusers UNet options our UNet does not express: {unsupported}")
    groups = c.get("norm_num_groups", 32)
    attn_groups = c.get("attn_norm_num_groups")
    scale_shift = c.get("resnet_time_scale_shift", "default") != "default"
    if attn_groups is None and scale_shift and "cross_attention_dim" not in c:
        # diffusers then builds the middle self-attention without its GroupNorm; ours always has one.
        raise ValueError("UNet2DModel with scale_shift and attn_norm_num_groups=None has an un-normalised "
                         "middle attention that our UNet does not express; set attn_norm_num_groups")
    if attn_groups not in (None, groups):
        raise ValueError(f"attn_norm_num_groups={attn_groups} differs from norm_num_groups={groups}")
    boc = [int(b) for b in c["block_out_channels"]]
    mc = boc[0]
    if any(b % mc for b in boc):
        raise ValueError(f"block_out_channels {boc} are not multiples of the first; no channel_mult fits")
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if any(t not in _DOWN_ATTN for t in down) or any(t not in _UP_ATTN for t in up):
        raise ValueError(
            f"unsupported block types {down} / {up}; supported: {list(_DOWN_ATTN)}, {list(_UP_ATTN)}"
        )
    attn = [_DOWN_ATTN[t] for t in down]
    if [_UP_ATTN[t] for t in reversed(up)] != attn:
        raise ValueError(f"up blocks {up} do not mirror down blocks {down}")
    if c.get("mid_block_type", _MID[0]) not in _MID:
        raise ValueError(f"unsupported mid_block_type {c.get('mid_block_type')!r}; supported: {list(_MID)}")
    layers = _per_block(c.get("layers_per_block", 2), len(boc))
    depth = _per_block(c.get("transformer_layers_per_block", 1), len(boc))
    if len(set(layers)) != 1 or len(set(depth)) != 1:
        raise ValueError("layers_per_block / transformer_layers_per_block vary per block; ours has one value")

    conditional = "cross_attention_dim" in c or any(t.startswith("CrossAttn") for t in down)
    if conditional:
        # UNet2DConditionModel: `attention_head_dim` holds the head count when num_attention_heads is unset.
        heads = _per_block(c.get("num_attention_heads") or c.get("attention_head_dim", 8), len(boc))
        widths = [boc[i] for i in range(len(boc)) if attn[i]] + [boc[-1]]
        used = [heads[i] for i in range(len(boc)) if attn[i]] + [heads[-1]]
        if len(set(used)) == 1:
            head_kw: dict[str, Any] = dict(num_heads=int(used[0]), num_head_channels=None)
        elif len({w // h for w, h in zip(widths, used)}) == 1:
            head_kw = dict(num_heads=1, num_head_channels=widths[0] // used[0])
        else:
            raise ValueError(f"attention heads {heads} are neither a fixed count nor a fixed width")
    else:
        # UNet2DModel: `attention_head_dim` is the width of a head; None means one head.
        d = c.get("attention_head_dim", 8)
        head_kw = dict(num_heads=1, num_head_channels=None if d is None else int(d))

    return UNetConfig(
        in_channels=int(c.get("in_channels", 4)),
        out_channels=int(c.get("out_channels", 4)),
        model_channels=mc,
        channel_mult=tuple(b // mc for b in boc),
        num_res_blocks=int(layers[0]),
        attention_resolutions=tuple(2**i for i, a in enumerate(attn) if a),
        dropout=float(c.get("dropout", 0.0)),
        use_scale_shift_norm=c.get("resnet_time_scale_shift", "default") == "scale_shift",
        num_classes=c.get("num_class_embeds"),
        context_dim=int(c["cross_attention_dim"]) if conditional else None,
        transformer_depth=int(depth[0]),
        use_linear_projection=bool(c.get("use_linear_projection", False)),
        norm_groups=int(groups),
        norm_eps=float(c.get("norm_eps", 1e-5)),
        flip_sin_to_cos=bool(c.get("flip_sin_to_cos", True)),
        freq_shift=float(c.get("freq_shift", 0)),
        **head_kw,
    )


def prefix_map(cfg: UNetConfig) -> dict[str, str]:
    """diffusers module prefix -> ours, for every block of `cfg`."""
    n, levels = cfg.num_res_blocks, len(cfg.channel_mult)
    attn = [2**i in cfg.attention_resolutions for i in range(levels)]
    m = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "class_embedding": "label_emb",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    idx = 1
    for i in range(levels):
        for j in range(n):
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{idx}.0"
            if attn[i]:
                m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{idx}.1"
            idx += 1
        if i < levels - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{idx}.0.op"
            idx += 1
    idx = 0
    for i in range(levels):
        level = levels - 1 - i
        for j in range(n + 1):
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{idx}.0"
            if attn[level]:
                m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{idx}.1"
            if j == n and level > 0:
                m[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{idx}.{2 if attn[level] else 1}.conv"
            idx += 1
    return m


def diffusers_unet_state_dict(state_dict: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """Rename a diffusers UNet state dict to our layout for `config` (see the module table)."""
    prefixes = prefix_map(config)
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[int, Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:cut])
            if head in prefixes:
                break
        else:
            unknown.append(key)
            continue
        ours, leaf = prefixes[head], ".".join(parts[cut:])
        if ".resnets." in head:
            module, _, param = leaf.rpartition(".")
            if module not in RESNET_LEAVES:
                unknown.append(key)
                continue
            out[f"{ours}.{RESNET_LEAVES[module]}.{param}"] = value
        elif ".attentions." in head and config.context_dim is None:
            module, _, param = leaf.rpartition(".")
            if module in _QKV:
                qkv.setdefault((ours, param), {})[_QKV[module]] = value
            elif module in _ATTENTION_LEAVES:
                out[f"{ours}.{_ATTENTION_LEAVES[module]}.{param}"] = value
            else:
                unknown.append(key)
        elif head == "class_embedding":
            # diffusers has no "null" class row; ours is appended as zeros (an untrained "no class").
            out[f"{ours}.{leaf}"] = torch.cat([value, value.new_zeros(1, value.shape[1])])
        else:
            out[f"{ours}.{leaf}"] = value
    for (ours, param), parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"attention {ours} lacks one of q, k, v {param}s in the diffusers state dict")
        out[f"{ours}.qkv.{param}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    if unknown:
        raise ValueError(f"diffusers keys with no place in this UNet config: {unknown[:8]}"
                         f"{' …' if len(unknown) > 8 else ''}")
    return out


def unet_from_diffusers(model: Any) -> UNet:
    """Our `UNet` with the weights of a diffusers `UNet2DConditionModel` / `UNet2DModel` instance."""
    config = unet_config_from_diffusers(model.config)
    unet = UNet(config)
    unet.load_state_dict(diffusers_unet_state_dict(model.state_dict(), config), strict=True)
    return unet.to(next(model.parameters()).dtype)
