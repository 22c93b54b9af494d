"""The UNet: published parameter counts, SD single-file key layout, config round trips, input checks,
conditioning, and the equal-output guarantees of gradient checkpointing and channels_last."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ddpm.io.keymaps import SINGLE_FILE, strip_prefix
from ddpm.models import UNet, UNetConfig
from ddpm.models.unet import _coordinates

KEYS_JSON = Path(__file__).parent / "data" / "sd15_single_file_keys.json"


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values (the zero-initialised output layers would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight"):  # norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def tiny(**overrides) -> UNetConfig:
    base = dict(in_channels=2, out_channels=2, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(2,), num_heads=2, norm_groups=8)
    return UNetConfig.from_dict({**base, **overrides})


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ published sizes
def test_ddpm_cifar10_parameter_count():
    # 35,746,307: the parameter count of the DDPM CIFAR-10 model in the original TF release (Ho et al. 2020).
    assert n_params(UNet(UNetConfig.ddpm_cifar10())) == 35_746_307


def test_sd15_keys_shapes_and_count_match_single_file_layout():
    ref_all = json.loads(KEYS_JSON.read_text())
    ref = {k: tuple(v) for k, v in strip_prefix(ref_all["keys"], SINGLE_FILE.unet).items()}
    with torch.device("meta"):
        unet = UNet(UNetConfig.sd15())
    ours = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert set(ours) - set(ref) == set()
    assert set(ref) - set(ours) == set()
    assert {k: s for k, s in ours.items() if ref[k] != s} == {}
    assert n_params(unet) == ref_all["params"]["unet"] == 859_520_964


def test_sd15_inpainting_differs_only_in_input_conv():
    with torch.device("meta"):
        base = UNet(UNetConfig.sd15()).state_dict()
        inpaint = UNet(UNetConfig.sd15_inpainting()).state_dict()
    assert set(base) == set(inpaint)
    differ = {k for k in base if base[k].shape != inpaint[k].shape}
    assert differ == {"input_blocks.0.0.weight"}
    assert tuple(inpaint["input_blocks.0.0.weight"].shape) == (320, 9, 3, 3)


def test_sd21_parameter_count():
    # 865,910,724: the Stable Diffusion 2.x UNet (v2-inference.yaml), linear projections and 64-wide heads.
    with torch.device("meta"):
        assert n_params(UNet(UNetConfig.sd21())) == 865_910_724


# ------------------------------------------------------------------------------------------- config
def test_config_json_round_trip_and_unknown_keys():
    cfg = UNetConfig.sd15(num_classes=7, learned_variance=True)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert UNetConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="attention_resolution'"):
        UNetConfig.from_dict({**d, "attention_resolution": [2]})


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(attention_resolutions=(16,)), "downsampling factors"),
        (dict(norm_groups=32), "norm_groups=32"),
        (dict(num_heads=3), "num_heads=3"),
        (dict(num_head_channels=5), "num_head_channels=5"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_classes=0), "num_classes"),
        (dict(model_channels=0), "model_channels"),
    ],
)
def test_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_small_preset_is_small_and_has_no_full_resolution_attention():
    cfg = UNetConfig.small(num_classes=10)
    assert cfg.attention_resolutions == (4,)
    assert 0.5e6 < n_params(UNet(cfg)) < 2e6


# ------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(learned_variance=True),
        dict(use_scale_shift_norm=True, resblock_updown=True, num_head_channels=8),
        dict(conv_resample=False, num_res_blocks=2, attention_resolutions=(1, 2)),
        dict(context_dim=12, transformer_depth=2),
        dict(context_dim=12, use_linear_projection=True, num_classes=3),
        dict(context_dim=12, context_pool=True, patch_size=2),
        dict(channel_mult=(2, 2)),  # a first level wider than model_channels
    ],
)
def test_forward_shapes(overrides):
    cfg = tiny(**overrides)
    unet = randomize(UNet(cfg))
    x = torch.randn(3, 2, 8, 8)
    kw = {}
    if cfg.num_classes:
        kw["class_labels"] = torch.tensor([0, 2, 3])
    if cfg.context_dim:
        kw["context"] = torch.randn(3, 5, 12)
    out = unet(x, torch.tensor([0, 500, 999]), **kw)
    assert out.shape == (3, cfg.output_channels, 8, 8)
    assert out.shape[1] == (4 if cfg.learned_variance else 2)
    assert torch.isfinite(out).all()


def test_scalar_and_float_timesteps_broadcast():
    unet = randomize(UNet(tiny())).eval()
    x = torch.randn(2, 2, 8, 8)
    full = unet(x, torch.tensor([7, 7]))
    assert torch.equal(unet(x, 7), full)
    assert torch.equal(unet(x, torch.tensor(7)), full)
    torch.testing.assert_close(unet(x, torch.tensor([7.0, 7.0])), full)
    # a fractional timestep is a different input (continuous-time samplers use them)
    assert not torch.allclose(unet(x, 7.5), full)


def test_conditioning_changes_the_output():
    unet = randomize(UNet(tiny(num_classes=3, context_dim=4))).eval()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3, 3])
    c = torch.randn(2, 6, 4)
    a = unet(x, t, class_labels=torch.tensor([0, 0]), context=c)
    b = unet(x, t, class_labels=torch.tensor([3, 3]), context=c)  # 3 = the null class
    d = unet(x, t, class_labels=torch.tensor([0, 0]), context=torch.randn(2, 6, 4))
    assert not torch.allclose(a, b) and not torch.allclose(a, d)
    assert unet.null_class == 3 and unet.label_emb.num_embeddings == 4


def test_input_errors_say_what_to_do():
    plain = UNet(tiny())
    cond = UNet(tiny(num_classes=3, context_dim=4))
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([1, 2])
    ctx = torch.randn(2, 5, 4)
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="divisible by 2"):
        plain(torch.randn(2, 2, 7, 8), t)
    with pytest.raises(ValueError, match=r"\[B, 2, H, W\]"):
        plain(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match="timesteps"):
        plain(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="set num_classes"):
        plain(x, t, class_labels=labels)
    with pytest.raises(ValueError, match="set context_dim"):
        plain(x, t, context=ctx)
    with pytest.raises(ValueError, match="class-conditional"):
        cond(x, t, context=ctx)
    with pytest.raises(ValueError, match="cross-attention"):
        cond(x, t, class_labels=labels)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        cond(x, t, class_labels=torch.tensor([0, 4]), context=ctx)
    with pytest.raises(ValueError, match="integer"):
        cond(x, t, class_labels=torch.tensor([0.0, 1.0]), context=ctx)
    with pytest.raises(ValueError, match="context must have shape"):
        cond(x, t, class_labels=labels, context=torch.randn(2, 5, 3))


# ------------------------------------------------------------------------------------------ options
def test_patch_size_is_the_unpatched_network_on_pixel_unshuffled_input():
    patched = randomize(UNet(tiny(patch_size=2, context_dim=4))).eval()
    inner = UNet(tiny(in_channels=8, out_channels=8, context_dim=4)).eval()
    inner.load_state_dict(patched.state_dict())  # same keys and shapes: only the data layout differs
    x, t, ctx = torch.randn(2, 2, 8, 8), torch.tensor([5, 700]), torch.randn(2, 3, 4)
    folded = torch.nn.functional.pixel_unshuffle(x, 2)
    want = torch.nn.functional.pixel_shuffle(inner(folded, t, context=ctx), 2)
    torch.testing.assert_close(patched(x, t, context=ctx), want)
    assert patched.config.downsampling_factor == 4
    with pytest.raises(ValueError, match="divisible by 4"):
        patched(torch.randn(2, 2, 6, 6), t, context=ctx)


def test_coord_channels_feed_each_cells_column_and_row_to_the_stem():
    coords = UNet(tiny(coord_channels=True, patch_size=2))
    plain = UNet(tiny(patch_size=2))
    randomize(coords).eval()
    stem = coords.input_blocks[0][0].weight  # [C, 2*4 + 2, 3, 3]: folded pixels, then column and row
    assert stem.shape[1] == 10
    state = {k: (v[:, :8] if k == "input_blocks.0.0.weight" else v) for k, v in coords.state_dict().items()}
    plain.load_state_dict(state)
    plain.eval()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([5, 700])
    assert not torch.allclose(coords(x, t), plain(x, t))
    with torch.no_grad():
        stem[:, 8:].zero_()  # without its coordinate weights the network is the plain one
    torch.testing.assert_close(coords(x, t), plain(x, t))
    grid = _coordinates(torch.zeros(1, 3, 2, 3))  # column in [-1, 1] left to right, row top to bottom
    assert grid.tolist() == [[[[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]], [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]]]


def test_context_pool_adds_the_mean_context_token_to_the_embedding():
    pooled = randomize(UNet(tiny(context_dim=4, context_pool=True))).eval()
    plain = UNet(tiny(context_dim=4)).eval()
    missing, unexpected = plain.load_state_dict(pooled.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["context_emb.bias", "context_emb.weight"]
    x, t, ctx = torch.randn(2, 2, 8, 8), torch.tensor([5, 700]), torch.randn(2, 3, 4)
    assert not torch.allclose(pooled(x, t, context=ctx), plain(x, t, context=ctx))
    with torch.no_grad():
        pooled.context_emb.weight.zero_()
        pooled.context_emb.bias.zero_()
    torch.testing.assert_close(pooled(x, t, context=ctx), plain(x, t, context=ctx))
    with pytest.raises(ValueError, match="needs context_dim"):
        UNet(tiny(context_pool=True))


def _loss_and_grads(unet: UNet, seed: int = 0):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 8, 8, generator=g)
    ctx = torch.randn(2, 3, 4, generator=g)
    torch.manual_seed(seed)  # same dropout masks
    out = unet(x, torch.tensor([10, 900]), class_labels=torch.tensor([1, 3]), context=ctx)
    loss = (out**2).mean()
    unet.zero_grad()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in unet.named_parameters()}


def test_gradient_checkpointing_gives_equal_outputs_and_gradients():
    cfg = tiny(num_classes=3, context_dim=4, dropout=0.2, use_scale_shift_norm=True)
    ref = randomize(UNet(cfg)).train()
    ckpt = UNet(cfg.replace(gradient_checkpointing=True)).train()
    ckpt.load_state_dict(ref.state_dict())
    out_a, grads_a = _loss_and_grads(ref)
    out_b, grads_b = _loss_and_grads(ckpt)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-6, atol=1e-7, msg=name)


def test_channels_last_gives_equal_outputs_and_gradients():
    cfg = tiny(num_classes=3, context_dim=4, num_res_blocks=2)
    ref = randomize(UNet(cfg)).train()
    cl = UNet(cfg.replace(channels_last=True)).train()
    cl.load_state_dict(ref.state_dict())
    assert cl.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    out_a, grads_a = _loss_and_grads(ref)
    out_b, grads_b = _loss_and_grads(cl)
    assert out_b.is_contiguous()  # callers get an ordinary NCHW tensor back
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_bf16_autocast_and_bf16_weights_stay_close_to_fp32():
    unet = randomize(UNet(tiny(context_dim=4, num_classes=2))).eval()
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 3, 4, generator=g)
    kw = dict(class_labels=torch.tensor([0, 2]), context=ctx)
    t = torch.tensor([1, 900])
    ref = unet(x, t, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = unet(x, t, **kw)
    low = unet.to(torch.bfloat16)(x.bfloat16(), t, class_labels=kw["class_labels"], context=ctx.bfloat16())
    for out in (mixed, low):
        assert out.dtype == torch.bfloat16
        # bf16 keeps ~3 significant digits; a few percent relative error through the network is expected
        assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05


def test_training_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    unet = UNet(tiny(num_classes=2))
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    x = torch.randn(8, 2, 8, 8)
    target = torch.randn(8, 2, 8, 8)
    t = torch.randint(0, 1000, (8,))
    y = torch.randint(0, 2, (8,))
    losses = []
    for _ in range(30):
        loss = ((unet(x, t, class_labels=y) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ------------------------------------------------------------------------- parity with the diffusers UNets
def _diffusers_randomized(model: nn.Module) -> nn.Module:
    return randomize(model, seed=3).eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(  # SD-1.x style: conv projections, a fixed head count
            block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=16, attention_head_dim=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        ),
        dict(  # SD-2.x style: linear projections, fixed head width (heads per block), three levels
            block_out_channels=(16, 32, 32), layers_per_block=1, cross_attention_dim=12,
            attention_head_dim=(2, 4, 4), use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        ),
    ],
)
def test_parity_with_diffusers_unet2d_condition_model(kwargs):
    from diffusers import UNet2DConditionModel

    from ddpm.io.diffusers_configs import unet_from_diffusers

    torch.manual_seed(0)
    ref = _diffusers_randomized(
        UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=8, **kwargs)
    )
    ours = unet_from_diffusers(ref).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 5, kwargs["cross_attention_dim"], generator=g)
    t = torch.tensor([3, 811])
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=ctx).sample
        got = ours(x, t, context=ctx)
    assert expected.abs().mean() > 0.1  # a non-trivial output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_parity_with_diffusers_unet2d_model_adm_options():
    from diffusers import UNet2DModel

    from ddpm.io.diffusers_configs import unet_from_diffusers

    ref = _diffusers_randomized(
        UNet2DModel(
            sample_size=8, in_channels=3, out_channels=6, block_out_channels=(16, 32), layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=8, attn_norm_num_groups=8, norm_eps=1e-6,
            resnet_time_scale_shift="scale_shift",
            flip_sin_to_cos=False, freq_shift=1, num_class_embeds=3,
        )
    )
    ours = unet_from_diffusers(ref).eval()
    assert ours.config.use_scale_shift_norm and ours.config.num_head_channels == 8
    assert ours.config.num_classes == 3
    assert torch.equal(ours.label_emb.weight[3], torch.zeros(ours.label_emb.weight.shape[1]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    t, y = torch.tensor([0, 999]), torch.tensor([2, 0])
    with torch.no_grad():
        expected = ref(x, t, class_labels=y).sample
        got = ours(x, t, class_labels=y)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_diffusers_sd_configs_translate_to_our_presets():
    from ddpm.io.diffusers_configs import unet_config_from_diffusers

    sd15 = {  # the fields of runwayml/stable-diffusion-v1-5 unet/config.json
        "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
        "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }
    assert unet_config_from_diffusers(sd15) == UNetConfig.sd15()
    assert unet_config_from_diffusers({**sd15, "in_channels": 9}) == UNetConfig.sd15_inpainting()
    sd21 = {**sd15, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
            "use_linear_projection": True}
    assert unet_config_from_diffusers(sd21) == UNetConfig.sd21()
    with pytest.raises(ValueError, match="act_fn"):
        unet_config_from_diffusers({**sd15, "act_fn": "gelu"})
    with pytest.raises(ValueError, match="mirror"):
        unet_config_from_diffusers({**sd15, "up_block_types": ["UpBlock2D"] * 4})


def test_full_size_sd15_diffusers_layout_maps_onto_ours():
    from diffusers import UNet2DConditionModel

    from ddpm.io.diffusers_configs import unet_config_from_diffusers
    from ddpm.io.keymaps import diffusers_unet_state_dict

    with torch.device("meta"):
        ref = UNet2DConditionModel(cross_attention_dim=768)  # the SD 1.x architecture, on no memory
        ours = UNet(UNetConfig.sd15())
    cfg = unet_config_from_diffusers(ref.config)
    assert cfg == UNetConfig.sd15()
    mapped = {k: tuple(v.shape) for k, v in diffusers_unet_state_dict(ref.state_dict(), cfg).items()}
    assert mapped == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_diffusers_state_dict_with_foreign_keys_is_rejected():
    from ddpm.io.keymaps import diffusers_unet_state_dict

    cfg = tiny(context_dim=4)
    with pytest.raises(ValueError, match="add_embedding"):
        diffusers_unet_state_dict({"add_embedding.linear_1.weight": torch.zeros(1)}, cfg)
