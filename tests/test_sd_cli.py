"""`ddpm img2img`, `ddpm inpaint` and the SD path of `ddpm txt2img` (cli/_sd.py) on a tiny random SD single
file built from our own modules: PNGs carry the web UIs' "parameters" chunk, a PNG's settings regenerate
its pixels, and user errors are one line with status 2."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.cli._sd import add_sd_arguments, is_sd_model, parse_size, run_sd_txt2img
from ddpm.io.images import read_png_metadata
from ddpm.io.sd import StableDiffusionModels, save_single_file
from ddpm.io.sd_layout import SchedulerConfig
from ddpm.models.autoencoder import AutoencoderKL, AutoencoderKLConfig
from ddpm.models.text_encoder import CLIPTextConfig, CLIPTextModel
from ddpm.models.unet import UNet, UNetConfig
from ddpm.text import CLIPTokenizer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny SD 1.x-layout single file (VAE factor 2, 2-level UNet: sizes in multiples of 4)."""
    torch.manual_seed(0)
    unet = UNet(
        UNetConfig.sd15(
            model_channels=32,
            channel_mult=(1, 2),
            attention_resolutions=(1,),
            num_res_blocks=1,
            context_dim=64,
        )
    )
    with torch.no_grad():  # SD's zero-initialised output conv would make every image the same
        unet.out[-1].weight.normal_(0, 0.05)
    vae = AutoencoderKL(AutoencoderKLConfig.sd15(base_channels=32, channel_mult=(1, 2), num_res_blocks=1))
    text = CLIPTextModel(CLIPTextConfig(width=64, layers=1, heads=1, intermediate=64))
    models = StableDiffusionModels(unet, vae, text, CLIPTokenizer.from_bpe_file(), SchedulerConfig(), "", "")
    return save_single_file(models, tmp_path_factory.mktemp("sd") / "tiny-sd.safetensors")


def _png(path, size=(24, 20), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_commands_are_registered(capsys):
    for command in ("img2img", "inpaint"):
        code, out, _ = _run(capsys, command, "--help")
        assert code == 0 and "--strength" in out and "--model" in out


def test_parse_size_and_model_detection(model, tmp_path):
    assert parse_size("512x768") == (512, 768) and parse_size(" 64 X 32 ") == (64, 32)
    for bad in ("512", "0x64", "axb"):
        with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT"):
            parse_size(bad)
    assert is_sd_model(model)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"unet.x": torch.zeros(1)}, str(other))
    assert not is_sd_model(other) and not is_sd_model(tmp_path / "missing")


def test_img2img_writes_pngs_with_web_ui_parameters(capsys, model, tmp_path):
    image = _png(tmp_path / "in.png")
    code, out, err = _run(
        capsys,
        "img2img",
        "--model",
        model,
        "--image",
        image,
        "--strength",
        "0.6",
        "--steps",
        "5",
        "--seed",
        "11",
        "--num",
        "2",
        "--negative",
        "dark",
        "--quiet",
        "--out",
        tmp_path / "out",
        "a (bright:1.2) lake",
    )
    assert code == 0, err
    files = sorted((tmp_path / "out").glob("*.png"))
    assert [f.name for f in files] == ["00000-11.png", "00001-12.png"]
    text = read_png_metadata(files[1])
    assert text["parameters"].splitlines()[:2] == ["a (bright:1.2) lake", "Negative prompt: dark"]
    assert (
        "Steps: 5, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 12, Size: 24x20, Model hash: "
        in text["parameters"]
    )
    meta = json.loads(text["ddpm"])
    assert meta["mode"] == "img2img" and meta["strength"] == 0.6 and meta["model"] == "tiny-sd"
    assert Image.open(files[0]).size == (24, 20)
    # a second run numbers on instead of overwriting
    assert (
        _run(
            capsys,
            "img2img",
            "--model",
            model,
            "--image",
            image,
            "--steps",
            "2",
            "--seed",
            "0",
            "--quiet",
            "--out",
            tmp_path / "out",
            "x",
        )[0]
        == 0
    )
    assert (tmp_path / "out" / "00002-0.png").is_file()


def test_png_settings_regenerate_the_same_pixels(capsys, model, tmp_path):
    image = _png(tmp_path / "in.png", size=(16, 16), seed=3)
    argv = [
        "img2img",
        "--model",
        model,
        "--image",
        image,
        "--steps",
        "4",
        "--seed",
        "5",
        "--sampler",
        "euler",
        "--quiet",
        "--guidance",
        "3",
        "--negative",
        "fog",
    ]
    assert _run(capsys, *argv, "--out", tmp_path / "a", "a boat")[0] == 0
    first = next((tmp_path / "a").glob("*.png"))
    meta = json.loads(read_png_metadata(first)["ddpm"])
    again = [
        "img2img",
        "--model",
        model,
        "--image",
        image,
        "--steps",
        meta["steps"],
        "--seed",
        meta["seed"],
        "--sampler",
        meta["sampler"],
        "--guidance",
        meta["guidance_scale"],
        "--negative",
        meta["negative_prompt"],
        "--strength",
        meta["strength"],
        "--quiet",
        "--out",
        tmp_path / "b",
        meta["prompt"],
    ]
    assert _run(capsys, *again)[0] == 0
    second = next((tmp_path / "b").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_inpaint_with_a_mask_of_another_size(capsys, model, tmp_path):
    image = _png(tmp_path / "in.png", size=(16, 16))
    mask = tmp_path / "mask.png"
    Image.new("L", (40, 40), 0).save(mask)
    m = np.zeros((40, 40), np.uint8)
    m[10:30, 10:30] = 255
    Image.fromarray(m).save(mask)
    code, out, err = _run(
        capsys,
        "inpaint",
        "--model",
        model,
        "--image",
        image,
        "--mask",
        mask,
        "--steps",
        "3",
        "--seed",
        "1",
        "--quiet",
        "--out",
        tmp_path / "out",
        "a red ball",
    )
    assert code == 0, err
    meta = json.loads(read_png_metadata(next((tmp_path / "out").glob("*.png")))["ddpm"])
    assert meta["mode"] == "inpaint" and meta["inpainting"] == "latent blending"


def test_sd_txt2img_entry_with_a_foreign_parser(capsys, model, tmp_path):
    """run_sd_txt2img reads what the calling parser has and takes SD defaults for the rest (None too)."""
    args = argparse.Namespace(
        model=str(model),
        prompt="a fox " * 40,
        out=str(tmp_path / "t"),
        negative="",
        steps=None,
        guidance=None,
        sampler=None,
        seed=0,
        num=2,
        batch_size=64,
        eta=0.0,
        quiet=True,
        size=(16, 12),
    )
    assert run_sd_txt2img(args) == 0
    out = capsys.readouterr().out
    assert "chunks of 75 tokens (not truncated)" in out
    files = sorted((tmp_path / "t").glob("*.png"))
    assert len(files) == 2 and Image.open(files[0]).size == (16, 12)
    meta = json.loads(read_png_metadata(files[0])["ddpm"])
    assert (meta["steps"], meta["sampler"], meta["guidance_scale"]) == (30, "dpmpp_2m", 7.5)
    p = argparse.ArgumentParser()
    add_sd_arguments(p)
    ns = p.parse_args(["--model", "m", "--size", "512x768", "hello"])
    assert ns.size == (512, 768) and ns.prompt == "hello" and ns.seed is None


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--size", "30x16"], "width=30 is not a multiple of 4"),
        (["--strength", "1.5"], "strength must lie in"),
        (["--sampler", "dpm_adaptive"], "unknown sampler"),
    ],
)
def test_user_errors_are_one_line(capsys, model, tmp_path, extra, match):
    image = _png(tmp_path / "in.png", size=(16, 16))
    code, _, err = _run(
        capsys,
        "img2img",
        "--model",
        model,
        "--image",
        image,
        "--steps",
        "2",
        "--quiet",
        "--out",
        tmp_path / "o",
        *extra,
        "x",
    )
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_missing_files_are_one_line(capsys, model, tmp_path):
    code, _, err = _run(capsys, "img2img", "--model", tmp_path / "nope", "--image", "x.png", "x")
    assert code == 2 and "no such SD model" in err
    code, _, err = _run(
        capsys,
        "inpaint",
        "--model",
        model,
        "--image",
        tmp_path / "none.png",
        "--mask",
        tmp_path / "none.png",
        "--quiet",
        "x",
    )
    assert code == 2 and "no such image file" in err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    code, _, err = _run(capsys, "img2img", "--model", model, "--image", bad, "--quiet", "x")
    assert code == 2 and "cannot read" in err


def test_ddpm_txt2img_serves_sd_checkpoints(capsys, model, tmp_path):
    """The one `ddpm txt2img` command reaches the SD pipeline for an SD file, with the SD-only options."""
    argv = ["txt2img", "--model", model, "a red door", "--size", "16x12", "--steps", 2, "--num", 1]
    code, out, err = _run(capsys, *argv, "--seed", 5, "--karras", "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    files = sorted((tmp_path / "o").glob("*.png"))
    assert len(files) == 1 and Image.open(files[0]).size == (16, 12)
    meta = json.loads(read_png_metadata(files[0])["ddpm"])
    assert (meta["prompt"], meta["seed"], meta["steps"], meta["karras"]) == ("a red door", 5, 2, True)
