"""The SD x4 upscaler against diffusers' StableDiffusionUpscalePipeline on a tiny random pipeline with the
release's structure: a 7-channel UNet with a noise-level class table (num_class_embeds), transformers whose
first attention attends the text at some levels (only_cross_attention per block), linear projections, an
f=4 VAE with scaling factor 0.08333, a GELU text encoder padding with "!" (SD 2's tokenizer), DDIM with
v-prediction and a DDPM low-res schedule. The diffusers pipeline is saved with save_pretrained and loaded by
us; the same prompt, seed, steps, noise level and guidance must give the same image (max |diff| <= 1e-3 in
[0, 1]). Then the CLI function and bad inputs.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import UsageError
from ddpm.io.images import read_png_metadata
from ddpm.pipelines import SamplingOptions, StableDiffusionUpscale
from tiny_sd import randomize, write_tokenizer

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
diffusers.utils.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

CONTEXT = 64  # one 64-wide head in the text encoder, as OpenCLIP's heads are
SIDE = 16  # low-res input; the output is 64 x 64
TOL = 1e-3
PROMPT, NEGATIVE = "a red fox, detailed fur", "blurry"
# the release's scheduler settings (scheduler/ and low_res_scheduler/ of stable-diffusion-x4-upscaler)
BETAS = dict(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The diffusers pipeline and the folder its save_pretrained wrote."""
    root = tmp_path_factory.mktemp("x4")
    vocab = write_tokenizer(root / "tok", pad_token="!")
    unet = randomize(diffusers.UNet2DConditionModel(
        sample_size=SIDE, in_channels=7, out_channels=4, block_out_channels=(32, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=[True, True, False], use_linear_projection=True, num_class_embeds=1000,
        attention_head_dim=8, cross_attention_dim=CONTEXT, norm_num_groups=32,  # as released
    ), seed=1)
    vae = randomize(diffusers.AutoencoderKL(
        block_out_channels=(32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        scaling_factor=0.08333,
    ), seed=2)
    text = randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=vocab, hidden_size=CONTEXT, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=1,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=vocab - 2, eos_token_id=2, pad_token_id=1,
    )), seed=3)
    pipe = diffusers.StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=transformers.CLIPTokenizer.from_pretrained(root / "tok"),
        unet=unet, low_res_scheduler=diffusers.DDPMScheduler(**BETAS),
        scheduler=diffusers.DDIMScheduler(prediction_type="v_prediction", clip_sample=False,
                                          set_alpha_to_one=False, steps_offset=1, **BETAS),
        max_noise_level=350,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "x4-upscaler")
    return dict(pipe=pipe, root=root / "x4-upscaler")


@pytest.fixture(scope="module")
def ours(ref):
    return StableDiffusionUpscale.load(ref["root"], device="cpu")


def _photo(side=SIDE, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, side)
    img = np.stack([ramp[None].repeat(side, 0), ramp[:, None].repeat(side, 1), np.full((side, side), 90.0)],
                   -1)
    return Image.fromarray(np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8))


def _unit(images: torch.Tensor) -> np.ndarray:
    return ((images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("guidance, noise_level, steps", [(6.0, 20, 3), (1.0, 120, 2)])
def test_upscale_matches_diffusers(ref, ours, guidance, noise_level, steps):
    image, seed = _photo(), 1234
    expected = ref["pipe"](
        PROMPT, image=image, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=guidance,
        noise_level=noise_level, generator=torch.Generator().manual_seed(seed), output_type="np",
    ).images
    got = ours.upscale(image, prompt=PROMPT, negative_prompt=NEGATIVE, noise_level=noise_level, steps=steps,
                       guidance_scale=guidance, seed=seed)
    assert got.images.shape == (1, 3, 4 * SIDE, 4 * SIDE)
    diff = np.abs(_unit(got.images) - expected).max()
    assert diff <= TOL, f"max |ours - diffusers| = {diff:.2e}"
    assert expected.std() > 0.05  # not two flat images
    meta = got.metadata[0]
    assert (meta["noise_level"], meta["seed"], meta["steps"]) == (noise_level, seed, steps)
    assert meta["sampler"] == "ddim"
    assert (meta["width"], meta["input_width"], meta["prediction"]) == (4 * SIDE, SIDE, "v")


def test_the_release_layout_loads_into_our_modules(ours):
    cfg = ours.unet.config
    assert (cfg.in_channels, cfg.num_classes, cfg.use_linear_projection) == (7, 1000, True)
    assert cfg.attention_resolutions == (2, 4) and cfg.cross_attention_only == (2,)
    assert ours.vae.config.scaling_factor == pytest.approx(0.08333) and ours.scale == 4
    assert (ours.scheduler.prediction, ours.scheduler.sampler, ours.final_sigma) == ("v", "ddim", "sigma_min")
    assert ours.models.max_noise_level == 350 and ours.tokenizer.pad_token == "!"
    # the first attention of a level in cross_attention_only reads the text: its keys are context-wide
    level_2 = ours.unet.input_blocks[3][1].transformer_blocks[0]
    assert not level_2.self_attention and level_2.attn1.to_k.in_features == CONTEXT


def test_seed_i_is_the_same_image_alone_and_in_a_call_of_two(ours):
    image, o = _photo(seed=3), SamplingOptions(steps=2, guidance_scale=1.0)
    two = ours.upscale(image, prompt=PROMPT, seed=10, options=o, num_images=2)
    alone = ours.upscale(image, prompt=PROMPT, seed=11, options=o)
    assert torch.equal(two.images[1], alone.images[0])
    assert not torch.equal(two.images[0], two.images[1])
    assert [m["seed"] for m in two.metadata] == [10, 11]


def test_a_tensor_input_in_minus_one_one_is_used_as_is(ours):
    pil = _photo(seed=4)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    a = ours.upscale(pil, prompt=PROMPT, steps=2, guidance_scale=1.0, seed=0)
    b = ours.upscale(x, prompt=PROMPT, steps=2, guidance_scale=1.0, seed=0)
    assert torch.allclose(a.images, b.images, atol=1e-6)


def _args(ref, tmp_path, **kw):
    base = dict(model=str(ref["root"]), image=str(tmp_path / "in.png"), prompt=PROMPT,
                negative_prompt=NEGATIVE,
                noise_level=20, steps=2, guidance=6.0, seed=5, out=str(tmp_path / "out.png"), device="cpu",
                dtype="float32", max_input_pixels=None, quiet=True)
    return argparse.Namespace(**{**base, **kw})


def test_ddpm_upscale_writes_the_pipelines_image_with_its_metadata(ref, ours, tmp_path, capsys):
    from ddpm.cli import main

    _photo(seed=5).save(tmp_path / "in.png")
    argv = ["upscale", "--model", str(ref["root"]), str(tmp_path / "in.png"),
            "--out", str(tmp_path / "out.png"), "--prompt", PROMPT, "--negative", NEGATIVE,
            "--noise-level", "20", "--steps", "2", "--guidance", "6", "--seed", "5", "--device", "cpu",
            "--dtype", "float32"]
    assert main(argv) == 0
    written = tmp_path / "out.png"
    assert str(written) in capsys.readouterr().out
    meta = json.loads(read_png_metadata(written)["ddpm"])
    assert (meta["mode"], meta["noise_level"], meta["seed"], meta["prompt"]) == ("upscale", 20, 5, PROMPT)
    expected = ours.upscale(tmp_path / "in.png", prompt=PROMPT, negative_prompt=NEGATIVE, noise_level=20,
                            steps=2, guidance_scale=6.0, seed=5).images[0]
    pixels = torch.from_numpy(np.asarray(Image.open(written), dtype=np.float32)).permute(2, 0, 1)
    assert (pixels - ((expected + 1) * 127.5)).abs().max() <= 1.0  # 1 LSB of the PNG's rounding


def test_ddpm_upscale_refuses_the_options_of_ddpm_sr_models_for_the_x4_upscaler(ref, tmp_path, capsys):
    from ddpm.cli import main

    _photo().save(tmp_path / "in.png")
    base = ["upscale", "--model", str(ref["root"]), str(tmp_path / "in.png"),
            "--out", str(tmp_path / "o.png")]
    assert main([*base, "--aug-level", "0.2", "--sampler", "euler"]) == 2
    assert "--aug-level, --sampler do not apply to the SD x4 upscaler" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_the_cli_function_checks_its_arguments_before_loading(ref, tmp_path):
    from ddpm.cli._sd_upscale import run_sd_upscale

    _photo().save(tmp_path / "in.png")
    with pytest.raises(UsageError, match="noise-level"):
        run_sd_upscale(_args(ref, tmp_path, noise_level=-1))
    with pytest.raises(FileNotFoundError, match="no such input image"):
        run_sd_upscale(_args(ref, tmp_path, image=str(tmp_path / "missing.png")))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(UsageError, match="cannot read"):
        run_sd_upscale(_args(ref, tmp_path, image=str(tmp_path / "notes.png")))
    with pytest.raises(UsageError, match=r"\.png"):
        run_sd_upscale(_args(ref, tmp_path, out=str(tmp_path / "out.jpg")))


@pytest.mark.parametrize("level", [-1, 351, 2.5, True, "20"])
def test_a_noise_level_out_of_range_is_refused(ours, level):
    with pytest.raises(ValueError, match=r"noise_level must be an integer in 0 … 350"):
        ours.upscale(_photo(), prompt=PROMPT, noise_level=level, steps=1)


@pytest.mark.parametrize("image, message", [
    (42, "unsupported image type int"),
    (torch.zeros(2, SIDE, SIDE), "1, 3 or 4 channels"),
    (torch.zeros(1, 5, SIDE, SIDE), "1, 3 or 4 channels"),
    (np.zeros((SIDE, SIDE, 3), dtype=np.float64), "uint8"),
    ("no/such/image.png", "no such image file"),
])
def test_what_is_not_an_image_is_refused_with_what_is_expected(ours, image, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ours.upscale(image, prompt=PROMPT, steps=1)


def test_a_large_input_is_refused_with_the_limit_and_the_option(ref):
    small = StableDiffusionUpscale.load(ref["root"], device="cpu", max_input_pixels=SIDE * SIDE)
    with pytest.raises(ValueError, match=r"24x24 = 576 pixels.*limit of 256.*max_input_pixels"):
        small.upscale(_photo(side=24), prompt=PROMPT, steps=1)


def test_a_side_off_the_unets_multiple_is_resized_with_a_warning(ours):
    with pytest.warns(UserWarning, match="not a multiple of 4"):
        out = ours.upscale(_photo(side=17), prompt=PROMPT, steps=1, guidance_scale=1.0, seed=0)
    assert out.images.shape[-2:] == (4 * 16, 4 * 16)


def test_a_text_to_image_folder_is_not_taken_for_an_upscaler(ref, tmp_path):
    from ddpm.io.sd import load_stable_diffusion
    from ddpm.io.sd_upscale import load_sd_upscaler

    with pytest.raises(ValueError, match="StableDiffusionUpscale"):
        load_stable_diffusion(ref["root"])
    index = json.loads((ref["root"] / "model_index.json").read_text())
    other = tmp_path / "sd"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="not an SD x4 upscaler"):
        load_sd_upscaler(other)
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)},
              str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not an SD x4 upscaler single file.*first_stage_model"):
        load_sd_upscaler(tmp_path / "x.safetensors")


def test_a_tokenizer_json_reads_as_its_vocab_and_merges_files(ref):
    from ddpm.text.clip_tokenizer import CLIPTokenizer

    files = CLIPTokenizer.from_folder(ref["root"].parent / "tok")  # vocab.json + merges.txt
    saved = CLIPTokenizer.from_folder(ref["root"] / "tokenizer")  # whatever transformers wrote
    text = ["the fox", "a red fox, blurry!"]
    assert torch.equal(files(text), saved(text))
    assert saved.pad_token_id == files.pad_token_id == 0


def _open_clip(text, extra_block_seed: int = 9) -> dict[str, torch.Tensor]:
    """The transformers text model's weights in OpenCLIP's layout (as SD 2 single files hold them), plus a
    last block that SD 2's penultimate-layer reading must skip, and the unused projection."""
    from ddpm.io.keymaps import text_keys

    sd, out = text_keys(text.state_dict()), {}  # with the `text_model.` level newer transformers omit
    n = text.config.num_hidden_layers
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    for p in ("weight", "bias"):
        out[f"ln_final.{p}"] = sd[f"text_model.final_layer_norm.{p}"]
        for i in range(n):
            a, b = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
            out[f"{b}attn.in_proj_{p}"] = torch.cat([sd[f"{a}self_attn.{q}_proj.{p}"] for q in "qkv"])
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{b}{theirs}.{p}"] = sd[f"{a}{ours}.{p}"]
    g = torch.Generator().manual_seed(extra_block_seed)
    for key in [k for k in out if k.startswith("transformer.resblocks.0.")]:
        out[key.replace(".0.", f".{n}.", 1)] = torch.randn(out[key].shape, generator=g)
    out["text_projection"] = torch.randn(CONTEXT, CONTEXT, generator=g)
    out["logit_scale"] = torch.tensor(4.6)
    return out


@pytest.fixture(scope="module")
def single_file(ref, ours):
    """The pipeline as the release's single file: LDM UNet (our names, no null row) and VAE, OpenCLIP text."""
    from safetensors.torch import save_file

    unet = dict(ours.unet.state_dict())
    unet["label_emb.weight"] = unet["label_emb.weight"][:-1]
    tensors = {**{"model.diffusion_model." + k: v for k, v in unet.items()},
               **{"first_stage_model." + k: v for k, v in ours.vae.state_dict().items()},
               **{"cond_stage_model.model." + k: v for k, v in _open_clip(ref["pipe"].text_encoder).items()}}
    path = ref["root"].parent / "x4-upscaler-ema.safetensors"
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(path))
    return path


def test_the_open_clip_text_tower_maps_as_diffusers_maps_it(ref):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    from ddpm.io.keymaps import open_clip_text_keys

    clip = _open_clip(ref["pipe"].text_encoder)
    theirs = convert_open_clip_checkpoint(ref["pipe"].text_encoder,
                                          {"cond_stage_model.model." + k: v for k, v in clip.items()})
    mine = open_clip_text_keys(clip)
    assert mine and all(torch.equal(v, theirs[k]) for k, v in mine.items())
    last = f"text_model.encoder.layers.{ref['pipe'].text_encoder.config.num_hidden_layers}."
    assert any(k.startswith(last) for k in theirs) and not any(k.startswith(last) for k in mine)


def test_the_single_file_upscales_as_diffusers_does(ref, single_file):
    up = StableDiffusionUpscale.load(single_file, device="cpu")
    assert up.unet.config.cross_attention_only == (2,) and up.unet.config.num_classes == 1000
    assert up.vae.config.scaling_factor == pytest.approx(0.08333) and up.tokenizer.pad_token == "!"
    image, seed = _photo(seed=6), 77
    expected = ref["pipe"](
        PROMPT, image=image, negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=6.0,
        noise_level=20, generator=torch.Generator().manual_seed(seed), output_type="np",
    ).images
    got = up.upscale(image, prompt=PROMPT, negative_prompt=NEGATIVE, noise_level=20, steps=3,
                     guidance_scale=6.0, seed=seed)
    assert np.abs(_unit(got.images) - expected).max() <= TOL


def test_the_cli_tells_an_upscaler_by_content_and_runs_the_single_file(ref, single_file, tmp_path):
    from ddpm.cli._sd_upscale import is_sd_upscaler, run_sd_upscale

    assert is_sd_upscaler(ref["root"]) and is_sd_upscaler(single_file)
    assert not is_sd_upscaler(ref["root"] / "unet") and not is_sd_upscaler(tmp_path / "missing")
    _photo(seed=8).save(tmp_path / "in.png")
    assert run_sd_upscale(_args(ref, tmp_path, model=str(single_file), steps=1)) == 0
    assert Image.open(tmp_path / "out.png").size == (4 * SIDE, 4 * SIDE)
    with pytest.raises(UsageError, match="not an SD x4 upscaler"):
        run_sd_upscale(_args(ref, tmp_path, model=str(ref["root"] / "unet"), out=str(tmp_path / "b.png")))


def test_cross_attention_only_levels_round_trip_through_the_diffusers_config():
    from ddpm.config.architectures import UNetConfig
    from ddpm.io.diffusers_configs import unet_config_from_diffusers, unet_config_to_diffusers

    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 1, 2),
                     attention_resolutions=(2, 4), cross_attention_only=(2,), context_dim=64, num_heads=8)
    d = unet_config_to_diffusers(cfg)
    assert d["only_cross_attention"] == [False, True, False]
    assert unet_config_from_diffusers(d) == cfg
    with pytest.raises(ValueError, match="one bool per down block"):
        unet_config_from_diffusers({**d, "only_cross_attention": True})
    with pytest.raises(ValueError, match="without attention"):
        cfg.replace(cross_attention_only=(1,))
    with pytest.raises(ValueError, match="needs context_dim"):
        UNetConfig(attention_resolutions=(2,), cross_attention_only=(2,))
