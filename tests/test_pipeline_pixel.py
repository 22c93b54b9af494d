"""PixelPipeline: load a run folder or model file, generate reproducible images with metadata."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ddpm.io.images import png_metadata, read_png_metadata, save_png
from ddpm.io.model_file import file_hash, load_model_file, save_model_file
from ddpm.models.unet import UNet, UNetConfig
from ddpm.pipelines import PixelPipeline, SamplingOptions
from ddpm.training import export_model, train
from test_training import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step class-conditional run with a preview grid (10 classes x 2) at step 2."""
    root = tmp_path_factory.mktemp("runs")
    return train(tiny_config(root, "cls", "data.condition=class", "train.steps=2", "train.sample_every=2",
                             "sample.num=20", "sample.steps=4", "sample.guidance_scale=2"), progress=False)


def _model_file(tmp_path, *, conditioning: str = "none", name: str = "m.safetensors"):
    cfg = UNetConfig.small(in_channels=1, model_channels=16, channel_mult=(1, 2), norm_groups=8)
    torch.manual_seed(0)
    unet = UNet(cfg)
    for p in unet.parameters():  # the output conv starts at zero; make outputs non-trivial
        p.data.normal_(0, 0.05)
    meta = {
        "unet": cfg.to_dict(),
        "diffusion": {"schedule": {"name": "linear", "num_timesteps": 100}, "prediction": "eps",
                      "learned_variance": False},
        "data": {"dataset": "x", "image_size": 8, "channels": 1, "class_names": None},
        "conditioning": {"type": conditioning, "num_classes": None,
                         "text_encoder": {"kind": "word_transformer"} if conditioning == "text" else None},
        "sampling": {"sampler": "dpmpp_2m", "steps": 5, "guidance_scale": 1.0, "clip_x0": "static"},
        "training": {"step": 0, "run": "hand-made"},
    }
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    return save_model_file(tmp_path / name, tensors, meta)


def test_training_writes_a_preview_grid_one_row_per_class(run):
    grid = run / "samples" / "step-2.png"
    with Image.open(grid) as im:
        # 10 rows of 2 images of 8x8 with 2-pixel padding
        assert im.size == (2 * 10 + 2, 10 * 10 + 2)
    assert json.loads(read_png_metadata(grid)["ddpm"])["step"] == 2


def test_run_folder_and_exported_file_give_the_same_images(run, tmp_path):
    from_run = PixelPipeline.load(run, device="cpu")
    exported = PixelPipeline.load(export_model(run, tmp_path / "cls.safetensors"), device="cpu")
    assert from_run.num_classes == 10 and from_run.device == torch.device("cpu")
    assert from_run.model_hash == file_hash(run / "checkpoints" / "step-2" / "ema.safetensors")
    a, meta_a = from_run.generate(4, class_labels=[3, "7", 0, 9], options=SamplingOptions(seed=1, steps=3))
    b, meta_b = exported.generate(4, class_labels=[3, "7", 0, 9], options=SamplingOptions(seed=1, steps=3))
    assert torch.equal(a, b)
    assert [m["class_label"] for m in meta_a] == [3, 7, 0, 9] and meta_a[1]["prompt"] == "class 7"
    assert meta_a[0]["guidance_scale"] == 2.0  # the run's sample.guidance_scale is the model's default
    assert a.shape == (4, 1, 8, 8) and a.min() >= -1 and a.max() <= 1


def test_an_image_is_reproducible_alone_from_its_seed(run):
    pipe = PixelPipeline.load(run, device="cpu")
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    for sampler in ("dpmpp_2m", "ddpm"):  # deterministic, and one drawing fresh noise every step
        batch, metas = pipe.generate(6, class_labels=labels, batch_size=4,
            options=SamplingOptions(seed=10, sampler=sampler, steps=4))
        alone, meta = pipe.generate(1, class_labels=5,
            options=SamplingOptions(seed=14, sampler=sampler, steps=4))
        # Same noise, same labels: equal up to the last bits CPU conv kernels may change with the batch size.
        torch.testing.assert_close(batch[4], alone[0], rtol=0, atol=1e-5)
        assert torch.equal(alone, pipe.generate(1, class_labels=5,
            options=SamplingOptions(seed=14, sampler=sampler, steps=4))[0])
        assert metas[4]["seed"] == meta[0]["seed"] == 14 and metas[4]["class_label"] == 5
    default, metas = pipe.generate(20,
        options=SamplingOptions(steps=2))  # no labels: classes in blocks of two
    assert [m["class_label"] for m in metas[:4]] == [0, 0, 1, 1]


def test_guidance_changes_the_images_and_metadata_round_trips_through_png(run, tmp_path):
    pipe = PixelPipeline.load(run, device="cpu")
    plain, _ = pipe.generate(2, class_labels=4, options=SamplingOptions(seed=0, guidance_scale=1.0, steps=3))
    guided, metas = pipe.generate(2, class_labels=4,
        options=SamplingOptions(seed=0, guidance_scale=3.0, steps=3))
    assert not torch.equal(plain, guided)
    path = save_png(tmp_path / "x.png", guided[1], png_metadata(metas[1]))
    text = read_png_metadata(path)
    assert "Steps: 3, Sampler: DPM++ 2M, CFG scale: 3, Seed: 1, Size: 8x8, Model hash: " in text["parameters"]
    assert json.loads(text["ddpm"]) == metas[1]


def test_unconditional_model_file_and_clear_errors(run, tmp_path):
    path = _model_file(tmp_path)
    pipe = PixelPipeline.load(path, device="cpu")
    images, metas = pipe.generate(3, batch_size=2, options=SamplingOptions(seed=0))
    assert images.shape == (3, 1, 8, 8) and pipe.num_classes is None
    assert metas[2]["model"] == "m" and metas[2]["seed"] == 2
    assert metas[2]["model_hash"] == file_hash(path) and "class_label" not in metas[2]
    assert images.std() > 0
    with pytest.raises(ValueError, match="unconditional.*guidance scale at 1"):
        pipe.generate(1, options=SamplingOptions(guidance_scale=2.0))
    with pytest.raises(ValueError, match="unconditional: it takes no class labels"):
        pipe.generate(1, class_labels=3)
    cls = PixelPipeline.load(run, device="cpu")
    with pytest.raises(ValueError, match=r"unknown class 10; this model knows 10 classes: 0 … 9"):
        cls.generate(1, class_labels=10)
    with pytest.raises(ValueError, match="unknown class 'ten'"):
        cls.generate(1, class_labels="ten")
    with pytest.raises(ValueError, match="got 2 class labels for 3 images"):
        cls.generate(3, class_labels=[1, 2])
    with pytest.raises(ValueError, match="class-conditional: it takes no prompts"):
        cls.generate(1, prompts="a red circle")
    with pytest.raises(ValueError, match="clip_skip applies to Stable Diffusion"):
        cls.generate(1, options=SamplingOptions(clip_skip=1))
    with pytest.raises(FileNotFoundError, match="no such run folder or model file"):
        PixelPipeline.load(tmp_path / "missing")
    tensors, meta = load_model_file(path)
    del tensors["unet.out.2.weight"]
    damaged = save_model_file(tmp_path / "damaged.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="weights do not match"):
        PixelPipeline.load(damaged)


def test_spacing_and_karras_are_offered_and_recorded_as_sampled(tmp_path):
    import ddpm

    pipe = PixelPipeline.load(_model_file(tmp_path), device="cpu")
    default, meta = pipe.generate(1, options=SamplingOptions(steps=4))
    assert (meta[0]["spacing"], meta[0]["karras"]) == ("trailing", False)
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for spacing, karras, exponential in (("leading", False, False), ("linspace", True, False),
                                         ("trailing", False, True)):  # fmt: skip
        options = SamplingOptions(steps=4, spacing=spacing, karras=karras, exponential=exponential)
        images, meta = pipe.generate(1, options=options)
        recorded = (meta[0]["spacing"], meta[0]["karras"], meta[0]["exponential"])
        assert recorded == (spacing, karras, exponential)
        assert not torch.equal(images, default)
        ref = ddpm.sample(pipe.unet, noise, schedule=pipe.schedule, steps=4, spacing=spacing, karras=karras,
                          exponential=exponential, clip_x0="static",
                          generator=[torch.Generator().manual_seed(0)]).clamp(-1, 1)  # fmt: skip
        torch.testing.assert_close(images, ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="choose one of them"):
        SamplingOptions(karras=True, exponential=True)


def test_sampling_options_are_checked_against_the_names():
    with pytest.raises(ValueError, match="unknown sampler 'dpm_adaptive'"):
        SamplingOptions(sampler="dpm_adaptive")
    with pytest.raises(ValueError, match="unknown spacing 'even'"):
        SamplingOptions(spacing="even")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        SamplingOptions(steps=0)
    with pytest.raises(TypeError):
        SamplingOptions("ddim")  # keyword-only
    assert SamplingOptions(seed=3).replace(steps=2) == SamplingOptions(seed=3, steps=2)
