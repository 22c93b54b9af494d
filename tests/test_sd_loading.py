"""Stable Diffusion 1.x loading: diffusers folders and single files into our modules, parity with the
reference libraries on the same weights, the full-size single-file layout, and readable errors
for wrong files.

The reference models are tiny random diffusers `UNet2DConditionModel` / `AutoencoderKL` and a transformers
`CLIPTextModel`, saved with `save_pretrained` into a pipeline folder; the same weights then travel through
every route we load, and outputs must agree to 1e-5 relative in float32 on the CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm.io.checkpoint import load_state_dict
from ddpm.io.keymaps import SINGLE_FILE, ema_key, strip_prefix
from ddpm.io.sd import load_stable_diffusion, save_diffusers_folder, save_single_file, single_file_state_dict
from ddpm.io.sd_layout import (
    SchedulerConfig,
    infer_text_config,
    infer_unet_config,
    infer_vae_config,
)
from ddpm.models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from ddpm.models.text_encoder import CLIPTextConfig, CLIPTextModel
from ddpm.models.unet import UNet, UNetConfig
from tiny_sd import randomize, write_tokenizer

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

KEYS_JSON = Path(__file__).parent / "data" / "sd15_single_file_keys.json"
TOL = dict(rtol=1e-5, atol=1e-5)
CONTEXT = 64  # text width = UNet cross-attention width of the tiny pipeline


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Tiny random reference modules and the diffusers pipeline folder `save_pretrained` wrote them to."""
    torch.manual_seed(0)
    unet = randomize(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=CONTEXT, attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ), seed=1)
    vae = randomize(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16,
    ), seed=2)
    text = randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=CONTEXT, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406,
        eos_token_id=2, pad_token_id=1,
    )), seed=3)
    root = tmp_path_factory.mktemp("pipeline")
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
    }))
    return dict(unet=unet, vae=vae, text=text, root=root)


@pytest.fixture(scope="module")
def from_folder(reference):
    return load_stable_diffusion(reference["root"])


def _inputs():
    g = torch.Generator().manual_seed(0)
    return dict(
        x=torch.randn(2, 4, 8, 8, generator=g), t=torch.tensor([5, 901]),
        ctx=torch.randn(2, 7, CONTEXT, generator=g), image=torch.rand(1, 3, 16, 16, generator=g) * 2 - 1,
        z=torch.randn(1, 4, 8, 8, generator=g), ids=torch.randint(0, 49406, (2, 77), generator=g),
    )


def _assert_parity(models, reference) -> None:
    """UNet, VAE encode/decode and text-encoder outputs of `models` equal the reference's to 1e-5."""
    i = _inputs()
    ids = i["ids"].clone()
    ids[:, 0], ids[0, 9], ids[1, 30] = 49406, 49407, 49407  # BOS, then EOS (the largest id) mid-row
    with torch.no_grad():
        want = reference["unet"](i["x"], i["t"], encoder_hidden_states=i["ctx"]).sample
        torch.testing.assert_close(models.unet(i["x"], i["t"], context=i["ctx"]), want, **TOL)
        want_mean = reference["vae"].encode(i["image"]).latent_dist.mode()
        torch.testing.assert_close(models.vae.encode_posterior(i["image"]).mode(), want_mean, **TOL)
        want_image = reference["vae"].decode(i["z"]).sample
        torch.testing.assert_close(models.vae.decode_raw(i["z"]), want_image, **TOL)
        out = reference["text"](ids)
        ours = models.text_encoder(ids)
        torch.testing.assert_close(ours.last_hidden_state, out.last_hidden_state, **TOL)
        torch.testing.assert_close(ours.pooled, out.pooler_output, **TOL)
    assert want.abs().mean() > 0.1  # the comparison is not between two near-zero outputs


# ------------------------------------------------------------------------------------- diffusers folder
def test_folder_matches_reference_libraries(from_folder, reference):
    _assert_parity(from_folder, reference)
    assert from_folder.source_format == "diffusers_folder"
    assert len(from_folder.model_hash) == 10
    assert from_folder.scheduler == SchedulerConfig()  # SD 1.x: scaled_linear, eps, leading + 1, PLMS
    assert from_folder.tokenizer("a photo of a cat").shape == (1, 77)


def test_folder_prefers_safetensors_and_reads_text_keys_without_text_model_level(reference, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(reference["root"], root)
    # A stale .bin beside the safetensors holds different weights: the safetensors must win.
    unet_sd = load_file(root / "unet" / "diffusion_pytorch_model.safetensors")
    stale = {k: torch.zeros_like(v) for k, v in unet_sd.items()}
    torch.save(stale, root / "unet" / "diffusion_pytorch_model.bin")
    text_file = root / "text_encoder" / "model.safetensors"
    text_sd = load_file(text_file)
    assert not any(k.startswith("text_model.") for k in text_sd)  # transformers 5 drops the level
    text_file.unlink()  # the older writers: pytorch_model.bin with the `text_model.` level
    older = {"text_model." + k: v for k, v in text_sd.items()}
    torch.save(older, root / "text_encoder" / "pytorch_model.bin")
    _assert_parity(load_stable_diffusion(root), reference)


def test_folder_weights_in_fp16_load_as_float32(reference, tmp_path):
    root = tmp_path / "half"
    shutil.copytree(reference["root"], root)
    file = root / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.half() for k, v in load_file(file).items()}, file)
    models = load_stable_diffusion(root)
    assert models.unet.input_blocks[0][0].weight.dtype == torch.float32
    assert models.source_dtype == torch.float16
    want = reference["unet"].conv_in.weight.detach().half().float()
    assert torch.equal(models.unet.input_blocks[0][0].weight, want)
    assert load_stable_diffusion(root, dtype=torch.float16).unet.out[2].weight.dtype == torch.float16


# ----------------------------------------------------------------------------------------- single file
def test_single_file_written_by_us_matches_reference(from_folder, reference, tmp_path):
    path = save_single_file(from_folder, tmp_path / "sd.safetensors")
    keys = set(load_state_dict(path))
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    models = load_stable_diffusion(path)
    assert models.source_format == "single_file"
    _assert_parity(models, reference)


def _ldm_checkpoint(models) -> dict[str, torch.Tensor]:
    """The original LDM layout written by hand: Lightning `state_dict` nesting, EMA copies of the UNet
    under `model_ema.` (dots removed) with different plain weights, VAE attention as Linear `[C, C]`,
    text keys without `text_model.` plus a `position_ids` buffer, schedule buffers."""
    sd = {}
    for k, v in models.unet.state_dict().items():
        sd[SINGLE_FILE.unet + k] = v + 1.0  # the non-EMA weights differ
        sd[ema_key(k)] = v.clone()
    sd["model_ema.decay"], sd["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(1000)
    for k, v in models.vae.state_dict().items():
        linear = ".attn_1." in k and k.endswith(".weight") and v.ndim == 4
        sd[SINGLE_FILE.vae + k] = v[:, :, 0, 0].clone() if linear else v.clone()
    for k, v in models.text_encoder.state_dict().items():
        sd[SINGLE_FILE.text_encoder + k.removeprefix("text_model.")] = v.clone()
    sd[SINGLE_FILE.text_encoder + "embeddings.position_ids"] = torch.arange(77)[None]
    sd["betas"] = models.scheduler.schedule().betas.float()
    return sd


def test_hand_written_ldm_ckpt_prefers_ema_and_matches_reference(from_folder, reference, tmp_path):
    path = tmp_path / "v1-like.ckpt"
    torch.save({"state_dict": _ldm_checkpoint(from_folder), "global_step": 1000}, path)
    _assert_parity(load_stable_diffusion(path), reference)
    plain = load_stable_diffusion(path, prefer_ema=False)
    assert torch.equal(plain.unet.out[2].bias, from_folder.unet.out[2].bias + 1.0)


def test_single_file_fp16_weights_are_cast(from_folder, tmp_path):
    sd = {k: v.half() if v.is_floating_point() else v for k, v in _ldm_checkpoint(from_folder).items()}
    path = tmp_path / "half.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    models = load_stable_diffusion(path, prediction="v")
    w = models.vae.decoder.conv_in.weight
    assert w.dtype == torch.float32 and torch.equal(w, from_folder.vae.decoder.conv_in.weight.half().float())
    assert models.scheduler.prediction == "v"


def test_round_trip_single_folder_single_is_bit_identical(from_folder, tmp_path):
    first = save_single_file(from_folder, tmp_path / "a.safetensors")
    folder = save_diffusers_folder(load_stable_diffusion(first), tmp_path / "folder")
    second = save_single_file(load_stable_diffusion(folder), tmp_path / "b.safetensors")
    assert first.read_bytes() == second.read_bytes()


def test_folder_we_write_loads_in_diffusers(from_folder, reference, tmp_path):
    folder = save_diffusers_folder(from_folder, tmp_path / "out")
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    i = _inputs()
    with torch.no_grad():
        want = reference["unet"](i["x"], i["t"], encoder_hidden_states=i["ctx"]).sample
        torch.testing.assert_close(unet(i["x"], i["t"], encoder_hidden_states=i["ctx"]).sample, want, **TOL)
    tok = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text = "a photo of a cat"
    assert tok(text, padding="max_length", max_length=77).input_ids == from_folder.tokenizer(text)[0].tolist()


# ------------------------------------------------------------------------------ full-size SD 1.5 layout
def test_full_size_sd15_single_file_layout_matches_key_list():
    expected = {k: tuple(v) for k, v in json.loads(KEYS_JSON.read_text())["keys"].items()}
    with torch.device("meta"):
        unet, vae, text = UNet(UNetConfig.sd15()), AutoencoderKL(AutoencoderKLConfig.sd15()), CLIPTextModel()
    sd = single_file_state_dict(unet, vae, text)
    assert len(expected) == 1130
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # And the configs read back from those shapes are the SD 1.5 presets.
    unet_sd, vae_sd, text_sd = (strip_prefix(sd, p) for p in SINGLE_FILE)
    assert infer_unet_config(unet_sd) == UNetConfig.sd15()
    assert infer_vae_config(vae_sd) == AutoencoderKLConfig.sd15()
    assert infer_text_config(text_sd) == CLIPTextConfig()
    inpainting = {**unet_sd, "input_blocks.0.0.weight": torch.empty(320, 9, 3, 3, device="meta")}
    assert infer_unet_config(inpainting) == UNetConfig.sd15_inpainting()


# ------------------------------------------------------------------------------------ readable errors
@pytest.fixture(scope="module")
def ldm(from_folder):
    return _ldm_checkpoint(from_folder)


def _save(tmp_path, sd, name="x.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: {**sd, **{k: torch.zeros(v.shape[0], 1024) for k, v in sd.items()
                              if k.endswith(("attn2.to_k.weight", "attn2to_kweight"))}},
         "cross-attention width 1024: this is an SD 2.x checkpoint, which is not supported yet"),
        (lambda sd: {**sd, "conditioner.embedders.0.transformer.x": torch.zeros(1)}, "SDXL"),
        (lambda sd: {"lora_unet_down_blocks_0_attentions_0.lora_down.weight": torch.zeros(4, 8)}, "LoRA"),
        (lambda sd: strip_prefix(sd, SINGLE_FILE.vae), "VAE-only"),
        (lambda sd: {k: v for k, v in sd.items() if not k.startswith(SINGLE_FILE.vae)}, "the VAE is missing"),
        (lambda sd: {"string_to_param.*": torch.zeros(1, 768)}, "textual-inversion embedding"),
        (lambda sd: {**sd, "cond_stage_model.model.transformer.resblocks.0.ln_1.weight": torch.ones(4)},
         "OpenCLIP"),
        (lambda sd: {"down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, "diffusers layout"),
    ],
    ids=["sd2", "sdxl", "lora", "vae-only", "no-vae", "embedding", "sd2-openclip", "diffusers-part"],
)
def test_wrong_files_name_the_likely_cause(ldm, tmp_path, edit, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_stable_diffusion(_save(tmp_path, edit(dict(ldm))))


def test_missing_and_misshapen_keys_give_one_summary(ldm, tmp_path, from_folder):
    sd = {k: v for k, v in ldm.items() if "output_blocks.1." not in k}
    summary = r"UNet weights do not fit: \d+ missing \(e\.g\. \['output_blocks\.1"
    with pytest.raises(ValueError, match=summary):
        load_stable_diffusion(_save(tmp_path, sd))
    inpainting = from_folder.unet.config.replace(in_channels=9)
    with pytest.raises(ValueError, match="takes 4 input channels, the model 9: it is a plain"):
        load_stable_diffusion(_save(tmp_path, ldm, "y.safetensors"), unet_config=inpainting)


def test_sd2_and_sdxl_folders_are_refused(reference, tmp_path):
    root = tmp_path / "sd2"
    shutil.copytree(reference["root"], root)
    cfg = json.loads((root / "unet" / "config.json").read_text())
    (root / "unet" / "config.json").write_text(json.dumps({**cfg, "cross_attention_dim": 1024}))
    with pytest.raises(ValueError, match="SD 2.x checkpoint, which is not supported yet"):
        load_stable_diffusion(root)
    index = json.loads((root / "model_index.json").read_text())
    (root / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match="SDXL"):
        load_stable_diffusion(root)
    shutil.rmtree(root / "vae")
    (root / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="vae component is missing"):
        load_stable_diffusion(root)


def test_full_size_sd15_folder_layout_matches_the_reference_libraries():
    """Our diffusers configs and key maps at full size build the same parameter set in diffusers and
    transformers (all on the meta device)."""
    from ddpm.io.diffusers_configs import (
        unet_config_from_diffusers,
        unet_config_to_diffusers,
        vae_config_to_diffusers,
    )
    from ddpm.io.keymaps import unet_to_diffusers, vae_to_diffusers

    with torch.device("meta"):
        unet, vae, text = UNet(UNetConfig.sd15()), AutoencoderKL(AutoencoderKLConfig.sd15()), CLIPTextModel()
        config = unet_config_to_diffusers(unet.config)
        ref_unet = diffusers.UNet2DConditionModel.from_config(config)
        ref_vae = diffusers.AutoencoderKL.from_config(vae_config_to_diffusers(vae.config))
        ref_text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text.config.to_transformers()))
    assert unet_config_from_diffusers(config) == UNetConfig.sd15()

    def shapes(sd):
        return {k: tuple(v.shape) for k, v in sd.items()}

    assert shapes(unet_to_diffusers(unet.state_dict(), unet.config)) == shapes(ref_unet.state_dict())
    assert shapes(vae_to_diffusers(vae.state_dict())) == shapes(ref_vae.state_dict())
    ref_keys = {k.removeprefix("text_model."): s for k, s in shapes(ref_text.state_dict()).items()
                if not k.endswith("position_ids")}
    assert {k.removeprefix("text_model."): s for k, s in shapes(text.state_dict()).items()} == ref_keys


def test_inpainting_unet_travels_both_layouts(from_folder, tmp_path):
    """A 9-channel UNet (latent + mask + masked-image latent) is read from the shapes of a single file and
    written as an inpainting pipeline folder."""
    from dataclasses import replace

    torch.manual_seed(4)
    models = replace(from_folder, unet=UNet(from_folder.unet.config.replace(in_channels=9)).eval())
    single = load_stable_diffusion(save_single_file(models, tmp_path / "inpaint.safetensors"))
    assert single.unet.config == models.unet.config
    folder = save_diffusers_folder(single, tmp_path / "inpaint")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    back = load_stable_diffusion(folder)
    assert back.unet.config.in_channels == 9
    assert torch.equal(back.unet.input_blocks[0][0].weight, models.unet.input_blocks[0][0].weight)


def test_partial_ema_falls_back_to_plain_weights_with_a_warning(ldm, tmp_path, from_folder):
    sd = {k: v for k, v in ldm.items() if k != ema_key("out.2.weight")}
    with pytest.warns(RuntimeWarning, match="EMA weights for only"):
        models = load_stable_diffusion(_save(tmp_path, sd))
    assert torch.equal(models.unet.out[2].bias, from_folder.unet.out[2].bias + 1.0)  # the plain copy
