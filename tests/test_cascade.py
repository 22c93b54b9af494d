"""Super-resolution models with noise-conditioning augmentation and the cascade pipeline (tiny CPU runs on
digits and shapes): levels drawn and embedded, exact resume, upscaling, regeneration from PNG metadata,
and the bad inputs of issue 15."""

from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.conditioning.low_res import alpha_bar_at, augment, blur, downsample
from ddpm.config import load_config
from ddpm.config.architectures import LowResConfig, UNetConfig
from ddpm.io.images import read_png_metadata, save_generated, to_uint8
from ddpm.io.model_file import load_model_file
from ddpm.io.model_meta import ModelMeta
from ddpm.io.run_folder import load_checkpoint, run_model_file
from ddpm.models import UNet
from ddpm.pipelines import Cascade, PixelPipeline, SamplingOptions, StageOptions
from ddpm.pipelines.cascade import generation_kwargs
from ddpm.schedules import cosine
from ddpm.training import SuperResolutionTask, make_task, train
from test_training import assert_same_checkpoint, tiny_config
from test_txt2img import TINY_TEXT

SR = ["data.image_size=16", "model.low_res={size = 8, aug_max = 0.6}", "train.steps=3"]
FAST = SamplingOptions(steps=3)


def _wake(pipe: PixelPipeline) -> PixelPipeline:
    """Give the near-zero layers of a 3-step model weight, so outputs depend visibly on every input."""
    torch.manual_seed(1)
    for p in pipe.unet.parameters():
        if p.abs().max() < 1e-2:
            p.data.normal_(0, 0.05)
    return pipe


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base = train(tiny_config(root, "base", "data.condition=class", "train.steps=2"), progress=False)
    sr = train(tiny_config(root, "sr", "data.condition=class", *SR), progress=False)
    return {"base": base, "sr": sr, "root": root}


def test_levels_are_drawn_per_sample_in_range_and_reach_the_unet_through_their_embedding(tmp_path):
    task = make_task(tiny_config(tmp_path, "t", *SR, "train.batch_size=64",
                                 "model.low_res={size = 8, aug_max = 0.6, blur = [0.4, 0.6]}"))
    assert isinstance(task, SuperResolutionTask)
    task.prepare()
    task.build()
    draws = task.draws(torch.Generator().manual_seed(0), parts=1)
    a = draws["aug"]
    assert a.shape == (64,) and a.min() >= 0 and a.max() <= 0.6 and a.std() > 0.1  # U[0, 0.6]
    assert draws["aug_eps"].shape == (64, 1, 8, 8) and 0 < int((draws["blur"] > 0).sum()) < 64
    x0 = torch.rand(64, 1, 16, 16) * 2 - 1
    seen = {}

    def forward(x_t, t, batch, drop):
        seen.update(batch)
        return torch.zeros_like(x_t)

    task.loss(forward, {"image": x0}, draws, rows=slice(0, 64), part=0, autocast=nullcontext)
    low = blur(downsample(x0, 8), draws["blur"])
    assert torch.allclose(seen["low_res"], augment(low, a, draws["aug_eps"], task.schedule), atol=1e-6)
    assert torch.equal(seen["aug_level"], a)
    none = make_task(tiny_config(tmp_path, "n", *SR, "model.low_res={size = 8, augment = \"none\"}"))
    none.prepare()
    none.build()
    assert torch.equal(none.draws(torch.Generator(), parts=1)["aug"], torch.zeros(8))
    # the level's embedding changes the output; the level k / T noises like the forward process at k - 1
    unet = UNet(UNetConfig.small(channel_mult=(1, 2), low_res={"size": 8})).eval()
    for p in unet.parameters():  # zero-initialised output layers would hide every embedding
        if p.abs().max() < 1e-2:
            p.data.normal_(0, 0.1)
    x, z = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(unet(x, 5, low_res=z, aug_level=0.0), unet(x, 5, low_res=z, aug_level=0.5))
    s = cosine(1000)
    ab = alpha_bar_at(s, torch.tensor([0.0, 0.25, 1.0]))
    assert ab[0] == 1.0 and torch.isclose(ab[1], s.alphas_cumprod[249].double())
    assert torch.isclose(ab[2], s.alphas_cumprod[-1].double())


def test_a_tiny_sr_model_resumes_bit_exactly_and_upscales(tmp_path, runs):
    random = ["data.condition=class", "data.flip=true", "train.grad_accum=2", "train.steps=4",
              "train.checkpoint_every=0", "model.low_res={size = 8, blur = [0.3, 0.6]}"]
    straight = train(tiny_config(tmp_path, "straight", *SR, *random), progress=False)
    resumed = train(tiny_config(tmp_path, "resumed", *SR, *random), progress=False, stop_after=2)
    train(None, resume=resumed, progress=False)
    assert_same_checkpoint(load_checkpoint(straight), load_checkpoint(resumed))
    meta = ModelMeta.from_dict(load_model_file(run_model_file(straight))[1])
    assert meta.unet["low_res"] == LowResConfig(size=8, blur=(0.3, 0.6)).to_dict() | {"aug_level": 0.25}
    pipe = _wake(PixelPipeline.load(runs["sr"], device="cpu"))
    low = torch.rand(3, 1, 8, 8) * 2 - 1
    images, metas = pipe.upscale(low, class_labels=[1, 2, 3], options=FAST, aug_level=0.1)
    assert images.shape == (3, 1, 16, 16) and metas[0]["aug_level"] == 0.1 and metas[0]["low_res_size"] == 8
    again, _ = pipe.upscale(low[1:2], class_labels=2, options=FAST.replace(seed=1), aug_level=0.1)
    assert torch.allclose(again[0], images[1], atol=1e-5)  # image i depends on seed + i alone
    other, _ = pipe.upscale(low, class_labels=[1, 2, 3], options=FAST, aug_level=0.9)
    assert not torch.allclose(other, images, atol=1e-3)
    guided, _ = pipe.upscale(low, class_labels=[1, 2, 3], options=FAST.replace(guidance_scale=3.0))
    plain, _ = pipe.upscale(low, class_labels=[1, 2, 3], options=FAST.replace(guidance_scale=1.0))
    assert not torch.allclose(guided, plain, atol=1e-4)  # the label is guided, the low-res kept in both


def test_a_text_sr_model_takes_prompts_and_guidance(tmp_path):
    cfg = load_config(None, [*TINY_TEXT, f"run.dir={str(tmp_path)!r}", "run.name=tsr", "data.image_size=16",
                             "model.low_res={size = 8}", "sample.num=4"])
    pipe = _wake(PixelPipeline.load(train(cfg, progress=False), device="cpu"))
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    a, _ = pipe.upscale(low, prompts="a red circle", options=FAST.replace(guidance_scale=4.0))
    b, _ = pipe.upscale(low, prompts="a blue square", options=FAST.replace(guidance_scale=4.0))
    assert a.shape == (2, 3, 16, 16) and not torch.allclose(a, b, atol=1e-4)


def test_cascade_png_metadata_regenerates_the_same_pixels(runs, tmp_path):
    base = PixelPipeline.load(runs["base"], device="cpu")
    sr = _wake(PixelPipeline.load(runs["sr"], device="cpu"))
    cascade = Cascade([base, sr])
    plan = [StageOptions(options=SamplingOptions(steps=2, sampler="ddim")),
            StageOptions(options=SamplingOptions(steps=3, sampler="euler_a", guidance_scale=2.0,
                                                 clip_x0="dynamic"), aug_level=0.2)]
    result = cascade.generate(3, class_labels=[4, 5, 6], seed=11, stages=plan)
    assert [tuple(x.shape) for x in result.stages] == [(3, 1, 8, 8), (3, 1, 16, 16)]
    stage = result.metadata[2]["cascade"]
    assert [s["clip_x0"] for s in stage] == ["static", "dynamic"] and stage[1]["aug_level"] == 0.2
    assert stage[1]["sampler"] == "euler_a" and stage[0]["seed"] != stage[1]["seed"]
    paths, _ = save_generated(tmp_path, result.images, result.metadata)
    meta = json.loads(read_png_metadata(paths[2])["ddpm"])
    again = cascade.generate(1, **generation_kwargs(meta))
    assert torch.equal(to_uint8(again.images[0]), to_uint8(result.images[2]))
    assert np.array_equal(np.asarray(Image.open(paths[2])), to_uint8(again.images[0])[..., 0].numpy())


def test_cli_upscale_and_cascades(runs, tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 12), dtype=np.uint8)).save(small)
    out = tmp_path / "big.png"
    code = main(["upscale", "--model", str(runs["sr"]), str(small), "--out", str(out), "--steps", "2",
                 "--class", "3", "--aug-level", "0.2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "is 12x10; this model upscales 8x8 images to 16x16" in err
    assert Image.open(out).size == (16, 16) and json.loads(read_png_metadata(out)["ddpm"])["aug_level"] == 0.2
    code = main(["sample", "--model", str(runs["base"]), "--upscaler", str(runs["sr"]), "--num", "2",
                 "--steps", "2", "--upscaler-steps", "2", "--aug-level", "0.3", "--out", str(tmp_path / "c")])
    assert code == 0, capsys.readouterr().err
    meta = json.loads(read_png_metadata(tmp_path / "c" / "00001-seed1.png")["ddpm"])
    assert [s["model"] for s in meta["cascade"]] == ["base", "sr"] and meta["cascade"][1]["aug_level"] == 0.3


def test_bad_inputs_name_the_fix(runs, tmp_path, capsys):
    sr = PixelPipeline.load(runs["sr"], device="cpu")
    with pytest.raises(ValueError, match=r"upscales 8x8 images .* got 16x16"):
        sr.upscale(torch.zeros(1, 1, 16, 16), class_labels=1)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"aug_level must be a number in \[0, 1\]"):
            sr.upscale(torch.zeros(1, 1, 8, 8), class_labels=1, aug_level=bad)
    base = PixelPipeline.load(runs["base"], device="cpu")
    with pytest.raises(ValueError, match="sizes do not chain.*makes 16x16.*upscales 8x8"):
        Cascade([base, sr, sr])
    with pytest.raises(ValueError, match="stage 0 .* is a super-resolution model"):
        Cascade([sr, sr])
    with pytest.raises(ValueError, match="stage 1 .* is not a super-resolution model"):
        Cascade([base, base])
    with pytest.raises(ValueError, match="super-resolution model: it upscales"):
        sr.generate(2, class_labels=1)
    with pytest.raises(ValueError, match=r"low_res.size = 16 must be smaller than the images"):
        make_task(tiny_config(tmp_path, "big", "model.low_res={size = 16}", "data.image_size=16")).prepare()
    with pytest.raises(ValueError, match="low_res.augment must be one of"):
        load_config(None, ["model.low_res={augment = \"blurry\"}"])
    small = tmp_path / "s.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(small)
    cases = [
        (["upscale", "--model", str(runs["sr"]), str(small), "--out", str(tmp_path / "o.png"), "--class", "1",
          "--aug-level", "2"], "aug_level must be a number in [0, 1]"),
        (["upscale", "--model", str(runs["base"]), str(small), "--out", str(tmp_path / "o.png")],
         "is not a super-resolution model"),
        (["sample", "--model", str(runs["sr"]), "--upscaler", str(runs["sr"]), "--out", str(tmp_path / "x")],
         "is a super-resolution model"),
    ]
    diffusers = tmp_path / "x4"
    diffusers.mkdir()
    (diffusers / "model_index.json").write_text("{}")
    cases.append((["upscale", "--model", str(diffusers), str(small), "--out", str(tmp_path / "o.png")],
                  "text-to-image checkpoint, not an upscaler"))
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
