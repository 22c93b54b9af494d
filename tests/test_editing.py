"""Editing real images: DDIM inversion (`ddpm.invert`), LoRA adapters, Imagic's three stages on a tiny text
pixel model and on a tiny random SD 1.x, its saved state, the baselines and `ddpm edit`'s errors.

The tiny models come from the suites that own them: the 3-step text model of tests/test_txt2img.py
(`TINY_TEXT`), the unconditional model file of tests/test_pipeline_pixel.py and the random diffusers SD of
tests/tiny_sd.py (`components`, `save_folder`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
from ddpm.cli import main
from ddpm.config import load_config
from ddpm.editing import ImagicSettings, imagic, img2img, inversion_edit, load_edit
from ddpm.nn.lora import add_lora, load_lora_state_dict, lora_parameters, lora_state_dict, set_lora_scale
from ddpm.pipelines import PixelPipeline, SamplingOptions
from ddpm.schedules import cosine, linear
from ddpm.training import train
from test_pipeline_pixel import _model_file
from test_txt2img import TINY_TEXT
from tiny_sd import components, save_folder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
PROMPT = "a red circle"


# ---------------------------------------------------------------------------------------------- inversion
def _gaussian_eps(s: float, schedule):
    """The exact eps-prediction of data N(0, s^2 I): eps* = sqrt(1 - ab) x_t / (ab s^2 + 1 - ab)."""
    ab_table = schedule.alphas_cumprod.float()

    def model(x, t, **_):
        ab = ab_table[t.long()].view(-1, *([1] * (x.ndim - 1)))
        return (1 - ab).sqrt() * x / (ab * s**2 + 1 - ab)

    return model


def test_inversion_error_falls_as_steps_grow():
    schedule, s = linear(1000), 0.5
    x0 = s * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = [float(ddpm.invert(_gaussian_eps(s, schedule), x0, schedule=schedule, steps=n).error.mean())
              for n in (5, 20, 80)]  # fmt: skip
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.1 * errors[0]
    # the inverted x_T is what DDIM starts from: it regenerates x0 through ddpm.sample
    inv = ddpm.invert(_gaussian_eps(s, schedule), x0, schedule=schedule, steps=80)
    again = ddpm.sample(_gaussian_eps(s, schedule), inv.x_T, schedule=schedule, sampler="ddim", steps=80)
    assert torch.equal(again, inv.reconstruction)
    # re-reading the network at the point DDIM reads it at closes much of the gap (0.36 -> 0.12 here)
    fixed = ddpm.invert(_gaussian_eps(s, schedule), x0, schedule=schedule, steps=5, fixed_point=3)
    assert float(fixed.error.mean()) < 0.5 * errors[0]


def test_inversion_refuses_bad_input():
    schedule = cosine(100)
    with pytest.raises(ValueError, match="x0 must be"):
        ddpm.invert(_gaussian_eps(1, schedule), torch.zeros(3), schedule=schedule)
    with pytest.raises(ValueError, match="fixed_point"):
        ddpm.invert(_gaussian_eps(1, schedule), torch.zeros(1, 1, 2, 2), schedule=schedule, fixed_point=-1)


# ------------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return train(load_config(None, [*TINY_TEXT, f"run.dir={str(root)!r}", "run.name=txt"]), progress=False)


def _pipe(run):
    p = PixelPipeline.load(run, device="cpu")
    torch.manual_seed(1)  # three steps leave the zero-initialised layers near zero (as tests/test_txt2img.py)
    for prm in p.unet.parameters():
        if prm.abs().max() < 1e-2:
            prm.data.normal_(0, 0.05)
    return p


def test_lora_at_scale_zero_is_the_base_model_exactly(text_run, tmp_path):
    pipe = _pipe(text_run)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t, ctx = torch.tensor([10, 50]), pipe.encode([PROMPT, "a blue square"])
    base = pipe.unet(x, t, context=ctx)
    names = add_lora(pipe.unet, rank=2)
    assert names and all(not p.requires_grad for n, p in pipe.unet.named_parameters() if "lora_" not in n)
    with torch.no_grad():  # B starts at zero: give the adapters a real update
        for p in lora_parameters(pipe.unet):
            p.normal_(0, 0.3)
    adapted = pipe.unet(x, t, context=ctx)
    assert (adapted - base).abs().max() > 1e-3
    set_lora_scale(pipe.unet, 0.0)
    assert torch.equal(pipe.unet(x, t, context=ctx), base)
    # the adapter alone, loaded into a fresh base model, gives the adapted outputs
    state = lora_state_dict(pipe.unet)
    fresh = _pipe(text_run)
    load_lora_state_dict(fresh.unet, state)
    assert torch.equal(fresh.unet(x, t, context=ctx), adapted)
    with pytest.raises(ValueError, match="rank"):
        add_lora(_pipe(text_run).unet, rank=10_000)
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(fresh.unet, rank=2)


# ------------------------------------------------------------------------------------------------ Imagic
def _scene_png(path, size=16):
    img = np.full((size, size, 3), 20, np.uint8)
    img[4:11, 3:10] = (220, 30, 30)
    Image.fromarray(img).save(path)
    return path


TINY = ImagicSettings(embedding_steps=8, finetune_steps=8, batch=2, embedding_lr=0.05, finetune_lr=1e-3)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_imagic_stages_lower_their_losses_and_the_state_reloads(text_run, tmp_path, finetune):
    pipe = _pipe(text_run)
    image = _scene_png(tmp_path / "in.png")
    settings = ImagicSettings(**{**TINY.to_dict(), "finetune": finetune})
    edit = imagic(pipe, image, "a blue circle", settings=settings, options=SamplingOptions(steps=4))
    for stage in ("embedding", "finetune"):
        r = edit.report[stage]
        assert r["loss_after"] < r["loss_before"], (stage, r)
        assert r["seconds"] > 0 and r["trained_values"] > 0
    assert not torch.equal(edit.e_opt, edit.e_tgt)
    images = edit.render([0.0, 0.7, 1.0])
    assert images.shape == (3, 3, 16, 16) and not torch.equal(images[0], images[2])
    edit.save(tmp_path / "edit")
    edit.close()
    again = load_edit(tmp_path / "edit", model=_pipe(text_run))
    assert torch.equal(again.e_opt, edit.e_opt)
    assert torch.equal(again.render([0.0, 0.7, 1.0]), images)


def test_baselines_on_the_pixel_model(text_run, tmp_path):
    pipe = _pipe(text_run)
    image = _scene_png(tmp_path / "in.png")
    out = img2img(pipe, image, "a blue circle", strengths=(0.3, 1.0), options=SamplingOptions(steps=4))
    assert out.shape == (2, 3, 16, 16)
    src = pipe.encode([PROMPT])
    assert src.shape[0] == 1
    same, error = inversion_edit(pipe, image, PROMPT, source_prompt=PROMPT, options=SamplingOptions(steps=20))
    assert math.isfinite(error)
    # with target = source the inversion reconstructs: much closer to the image than a strength-1 redraw
    from ddpm.pipelines.sd_images import image_tensor

    x = image_tensor(image, 16, 16)
    assert float((same - x).pow(2).mean()) < 0.5 * float((out[1:] - x).pow(2).mean())


# -------------------------------------------------------------------------------------------- SD 1.x
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    torch.manual_seed(0)
    unet, vae, text = components()
    return save_folder(tmp_path_factory.mktemp("sd"), unet, vae, text, "StableDiffusionPipeline")


def test_imagic_and_inversion_on_a_tiny_sd(tiny_sd, tmp_path):
    from ddpm.editing import edit_model
    from test_sd_pipeline import _photo

    model = edit_model(str(tiny_sd), device="cpu")
    photo = _photo()
    x0 = model.to_x0(model.pixels(photo))
    assert x0.shape == (1, 4, 16, 16)
    ctx = model.embed(PROMPT)
    assert ctx.shape == (1, 77, 64)
    # random weights are no denoiser, so only the Gaussian test above measures the error against steps
    inv = model.invert(x0, ctx, model.sampling(SamplingOptions(steps=3)))
    assert inv.x_T.shape == x0.shape and math.isfinite(float(inv.error))
    settings = ImagicSettings(
        embedding_steps=4, finetune_steps=4, embedding_lr=1e-2, finetune_lr=1e-3, batch=2
    )
    edit = imagic(model, photo, "a watercolour fox", settings=settings, options=SamplingOptions(steps=2))
    assert edit.settings.finetune == "lora"  # SD's default
    for stage in ("embedding", "finetune"):
        assert edit.report[stage]["loss_after"] < edit.report[stage]["loss_before"], edit.report[stage]
    images = edit.render([0.5], init_from_inversion=True)
    assert images.shape == (1, 3, 32, 32)
    edit.save(tmp_path / "sd-edit")
    edit.close()
    again = load_edit(tmp_path / "sd-edit")  # the model path travels in the state
    assert torch.equal(again.render([0.5], init_from_inversion=True), images)


# ----------------------------------------------------------------------------------------------- the CLI
def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_ddpm_edit_imagic_then_resume_writes_a_strip(text_run, tmp_path, capsys):
    image = _scene_png(tmp_path / "in.png", size=24)  # the model is 16 px: resized with a warning
    out = tmp_path / "edit"
    code, stdout, err = _run(
        capsys,
        "edit",
        "--model",
        text_run,
        image,
        "a blue circle",
        "--eta",
        "0.7",
        "--embedding-steps",
        3,
        "--finetune-steps",
        3,
        "--steps",
        3,
        "--quiet",
        "--out",
        out,
    )
    assert code == 0, err
    assert "resized to 16x16" in err and "stage embedding" in err and "stage finetune" in err
    assert (out / "imagic-eta0.70.png").is_file() and (out / "edit.json").is_file()
    first = np.asarray(Image.open(out / "imagic-eta0.70.png"))
    code, stdout, err = _run(capsys, "edit", "--resume-edit", out, "--eta", 0.4, 0.7, 1.0, "--quiet")
    assert code == 0, err
    assert (out / "strip.png").is_file() and np.array_equal(
        np.asarray(Image.open(out / "imagic-eta0.70.png")), first
    )
    assert json.loads((out / "edit.json").read_text())["report"]["finetune"]["steps"] == 3
    code, _, err = _run(
        capsys,
        "edit",
        "--model",
        text_run,
        image,
        "a blue circle",
        "--method",
        "img2img",
        "--strength",
        0.5,
        1.0,
        "--steps",
        4,
        "--quiet",
        "--out",
        tmp_path / "i2i",
    )
    assert code == 0, err
    assert (tmp_path / "i2i" / "strip.png").is_file()


@pytest.mark.parametrize("extra, match", [
    (["", "--eta", "0.5"], "target text is empty"),
    (["a blue circle", "--eta", "2"], r"eta must lie in \[0, 1.5\]"),
    (["a blue circle", "--method", "inversion"], "--source-prompt"),
    (["a blue circle", "--method", "img2img", "--strength", "1.5"], "strength must lie in"),
])  # fmt: skip
def test_ddpm_edit_bad_input_is_one_line(text_run, tmp_path, capsys, extra, match):
    image = _scene_png(tmp_path / "in.png")
    code, _, err = _run(capsys, "edit", "--model", text_run, image, *extra, "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(match, err), err


def test_ddpm_edit_refuses_a_model_without_text(tmp_path, capsys):
    model = _model_file(tmp_path, conditioning="none")
    image = _scene_png(tmp_path / "in.png")
    code, _, err = _run(capsys, "edit", "--model", model, image, "a blue circle", "--out", tmp_path / "o")
    assert code == 2 and "needs a text model" in err, err
    code, _, err = _run(capsys, "edit", "--resume-edit", tmp_path / "nothing")
    assert code == 2 and "holds no edit.json" in err, err
