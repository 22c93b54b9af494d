"""The key tables of `ddpm.io.keymaps`: each is one-to-one, so its inverse loses nothing, and ours -> theirs
-> ours is the identity on real key sets (the full SD 1.5 single file, tiny models of every kind) and on
real diffusers state dicts the other way round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddpm.io.keymaps import (
    MODEL_FILE,
    SINGLE_FILE,
    add_prefix,
    diffusers_unet_state_dict,
    invert,
    rename,
    strip_prefix,
    text_keys,
    unet_table,
    unet_to_diffusers,
    vae_from_diffusers,
    vae_table,
    vae_to_diffusers,
)
from ddpm.models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from ddpm.models.unet import UNet, UNetConfig

KEYS = json.loads((Path(__file__).parent / "data" / "sd15_single_file_keys.json").read_text())["keys"]
PIXEL = UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2,
                   attention_resolutions=(2, 4), num_heads=2, norm_groups=8, num_classes=3)
LATENT = UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(1,), num_heads=2, norm_groups=8, context_dim=8)
TABLES = {"unet sd15": unet_table(UNetConfig.sd15()), "unet pixel": unet_table(PIXEL),
          "unet latent": unet_table(LATENT), "vae 4x3": vae_table(4, 3)}


@pytest.mark.parametrize("name", TABLES)
def test_every_table_is_one_to_one_so_its_inverse_is_exact(name):
    table = TABLES[name]
    theirs = [t for t, _ in table.values()]
    assert len(set(theirs)) == len(theirs)
    for _, leaves in table.values():
        assert leaves is None or len(set(leaves.values())) == len(leaves)
    assert invert(invert(table)) == table


def test_the_sd15_single_file_splits_into_the_prefix_table():
    parts = [strip_prefix(KEYS, p) for p in SINGLE_FILE]
    assert [len(p) for p in parts] == [686, 248, 196]
    assert {k for p, part in zip(SINGLE_FILE, parts) for k in add_prefix(part, p)} == set(KEYS)
    assert not set(MODEL_FILE) & set(SINGLE_FILE)
    assert text_keys(parts[2]) == parts[2]  # SD 1.x files already carry the `text_model.` level
    assert set(text_keys(strip_prefix(parts[2], "text_model."))) == set(parts[2])


@pytest.mark.parametrize("component", ["unet", "vae"])
def test_sd15_keys_map_to_the_diffusers_names_and_back(component):
    diffusers = pytest.importorskip("diffusers")
    ours = list(strip_prefix(KEYS, getattr(SINGLE_FILE, component)))
    table = unet_table(UNetConfig.sd15()) if component == "unet" else vae_table(4, 3)
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(cross_attention_dim=768) if component == "unet" else \
            diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                    down_block_types=("DownEncoderBlock2D",) * 4,
                                    up_block_types=("UpDecoderBlock2D",) * 4)
    theirs = rename(ours, table, what="ours")
    assert set(theirs.values()) == set(ref.state_dict())
    back = rename(theirs.values(), invert(table), what="theirs")
    assert [back[theirs[k]] for k in ours] == ours


@pytest.mark.parametrize("config", [PIXEL, LATENT], ids=["pixel", "latent"])
def test_unet_state_dict_round_trips_through_diffusers(config):
    torch.manual_seed(0)
    sd = {k: torch.randn_like(v) for k, v in UNet(config).state_dict().items()}
    if "label_emb.weight" in sd:
        sd["label_emb.weight"][-1] = 0  # diffusers has no "null" class row; ours reads back as zeros
    theirs = unet_to_diffusers(sd, config)
    assert not any(".qkv." in k or k.startswith(("input_blocks", "label_emb")) for k in theirs)
    back = diffusers_unet_state_dict(theirs, config)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_diffusers_state_dicts_round_trip_through_ours():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    pixel = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
        norm_num_groups=8, num_class_embeds=3,
    )
    latent = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=8,
        attention_head_dim=2, norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2)
    from ddpm.io.diffusers_configs import unet_config_from_diffusers

    for model in (pixel, latent):
        sd, config = model.state_dict(), unet_config_from_diffusers(model.config)
        back = unet_to_diffusers(diffusers_unet_state_dict(sd, config), config)
        assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    sd = vae.state_dict()
    back = vae_to_diffusers(vae_from_diffusers(sd))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_vae_state_dict_round_trips_through_diffusers():
    sd = AutoencoderKL(AutoencoderKLConfig.tiny()).state_dict()
    theirs = vae_to_diffusers(sd)
    assert theirs["encoder.mid_block.attentions.0.to_q.weight"].ndim == 2  # a Linear there, a 1x1 conv here
    back = vae_from_diffusers(theirs)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
