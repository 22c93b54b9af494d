"""Configs in and out of the diffusers `config.json` files: `UNet2DConditionModel` / `UNet2DModel` and
`AutoencoderKL`, as our `UNetConfig` / `AutoencoderKLConfig`, refusing the options ours does not express.
The weights' renaming is `ddpm.io.keymaps`; nothing here imports diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models.autoencoder import AutoencoderKLConfig
from ..models.unet import UNet, UNetConfig
from .keymaps import diffusers_unet_state_dict

__all__ = [
    "unet_config_from_diffusers",
    "unet_config_to_diffusers",
    "unet_from_diffusers",
    "vae_config_from_diffusers",
    "vae_config_to_diffusers",
]

_DOWN_ATTN = {"CrossAttnDownBlock2D": True, "AttnDownBlock2D": True, "DownBlock2D": False}
_UP_ATTN = {"CrossAttnUpBlock2D": True, "AttnUpBlock2D": True, "UpBlock2D": False}
_MID = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")
# Options of the diffusers configs our UNet does not express, with the value it must have.
_UNET_REQUIRED = {
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
    "dual_cross_attention": False,
    "mid_block_only_cross_attention": None,
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
# Options of the diffusers AutoencoderKL config that are runtime hints or bookkeeping, not architecture.
_VAE_IGNORED = {"sample_size", "force_upcast"}
_VAE_REQUIRED = {"act_fn": "silu", "latents_mean": None, "latents_std": None}


# ----------------------------------------------------------------------------------------------- UNet
def _per_block(value: Any, n: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_config_from_diffusers(config: Mapping[str, Any]) -> UNetConfig:
    """Our `UNetConfig` for a diffusers `UNet2DConditionModel` / `UNet2DModel` config (its `config.json`)."""
    c = dict(config)
    if c.get("mid_block_only_cross_attention") is False:
        c["mid_block_only_cross_attention"] = None  # the default: a plain middle block
    unsupported = {k: c[k] for k, want in _UNET_REQUIRED.items() if k in c and c[k] != want}
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
    cross_only = c.get("only_cross_attention", False)
    if isinstance(cross_only, bool):
        if cross_only:  # one bool also sets the middle block's, which ours keeps as self-attention
            raise ValueError("only_cross_attention=true (every block and the middle one) is not expressed by "
                             "our UNet; it takes one bool per down block, with a self-attending middle block")
        cross_only = [False] * len(boc)
    cross_only = [bool(v) for v in cross_only]
    if len(cross_only) != len(boc):
        raise ValueError(f"only_cross_attention {cross_only} needs one entry per block ({len(boc)})")
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
        cross_attention_only=tuple(2**i for i, a in enumerate(attn) if a and cross_only[i]),
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


def unet_config_to_diffusers(config: UNetConfig) -> dict[str, Any]:
    """The diffusers `UNet2DConditionModel` `config.json` for a cross-attention UNet config of ours."""
    c = config
    if c.context_dim is None or c.num_classes is not None or c.learned_variance or c.resblock_updown \
            or c.use_scale_shift_norm or not c.conv_resample:
        raise ValueError("only latent text-conditioned UNets (context_dim set, no classes, no learned "
                         "variance, plain ResBlocks) have a UNet2DConditionModel layout")
    levels = len(c.channel_mult)
    attn = [2**i in c.attention_resolutions for i in range(levels)]
    widths = [c.model_channels * m for m in c.channel_mult]
    if c.num_head_channels is None:
        heads: int | list[int] = c.num_heads
    else:
        heads = [w // c.num_head_channels for w in widths]
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 64,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "center_input_sample": False,
        "flip_sin_to_cos": c.flip_sin_to_cos,
        "freq_shift": int(c.freq_shift) if float(c.freq_shift).is_integer() else c.freq_shift,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "only_cross_attention": [2**i in c.cross_attention_only for i in range(levels)]
        if c.cross_attention_only else False,
        "block_out_channels": widths,
        "layers_per_block": c.num_res_blocks,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "dropout": c.dropout,
        "act_fn": "silu",
        "norm_num_groups": c.norm_groups,
        "norm_eps": c.norm_eps,
        "cross_attention_dim": c.context_dim,
        "transformer_layers_per_block": c.transformer_depth,
        "attention_head_dim": heads,
        "use_linear_projection": c.use_linear_projection,
    }


def unet_from_diffusers(model: Any) -> UNet:
    """Our `UNet` with the weights of a diffusers `UNet2DConditionModel` / `UNet2DModel` instance."""
    config = unet_config_from_diffusers(model.config)
    unet = UNet(config)
    unet.load_state_dict(diffusers_unet_state_dict(model.state_dict(), config), strict=True)
    return unet.to(next(model.parameters()).dtype)


# ------------------------------------------------------------------------------------------------ VAE
def vae_config_from_diffusers(config: Mapping[str, Any]) -> AutoencoderKLConfig:
    """Our `AutoencoderKLConfig` for a diffusers `AutoencoderKL` config (its `config.json`)."""
    c = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    bad = {k: c[k] for k, want in _VAE_REQUIRED.items() if k in c and c[k] != want}
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
             "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention", *_VAE_IGNORED,
             *_VAE_REQUIRED}
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

