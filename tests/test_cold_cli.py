"""The cold-diffusion commands: `ddpm data degrade` writes what the operator does, with the degradation and
level in each PNG's metadata."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm.cli import main
from ddpm.data.decode import read_image
from ddpm.degradations import Mask
from ddpm.io.images import read_png_metadata, save_png


def _images(folder, n=3, size=16):
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        save_png(folder / f"im{i}.png", torch.rand((1, size, size), generator=g) * 2 - 1)
    return folder


def test_data_degrade_writes_the_level_its_metadata_and_a_strip(tmp_path, capsys):
    src = _images(tmp_path / "in")
    out = str(tmp_path / "out")
    code = main(["data", "degrade", "--degradation", "mask", "--option", "centre=random", "--option",
                 "levels=8", "--level", "5", "--seed", "7", "--strip", str(src), out])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    meta = json.loads(read_png_metadata(tmp_path / "out" / "im1.png")["ddpm"])
    assert meta["degradation"] == {"name": "mask", **Mask(centre="random", levels=8).options()}
    assert meta["level"] == 5 and meta["seed"] == 8
    # the written image is D(x0, 5) with image 1's own centre (generator seed + 1)
    x0 = read_image(src / "im1.png")[None] * 2 - 1
    D = Mask(centre="random", levels=8).bind(x0, generator=[torch.Generator().manual_seed(8)])
    written = read_image(tmp_path / "out" / "im1.png")[None] * 2 - 1
    assert (written - D(x0, 5)).abs().max() <= 1 / 127.5 + 1e-6
    strip = read_image(tmp_path / "out" / "im1-strip.png")
    assert strip.shape[-1] > 8 * 16  # levels 0 … 8 side by side
    code = main(["data", "degrade", "--degradation", "downsample", "--level", "9", str(src), out])
    assert code == 2 and "outside 0 … 3" in capsys.readouterr().err
    code = main(["data", "degrade", "--degradation", "blur", "--option", "radius=2", str(src), out])
    assert code == 2 and "takes the options" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    """A 2-step cold blur model on 8x8 digits, exported to a model file."""
    from ddpm.training import export_model, train
    from test_training import tiny_config

    root = tmp_path_factory.mktemp("cold")
    cfg = tiny_config(root, "blur", 'diffusion.degradation="blur"', 'sample.sampler="cold"', "train.steps=2",
                      "diffusion.degradation_options={levels = 6, kernel_size = 5}")  # fmt: skip
    run = train(cfg, progress=False)
    return run, export_model(run, root / "blur.safetensors")


def test_sample_restore_and_trajectory_from_a_cold_model_file(cold_run, tmp_path, capsys):
    run, file = cold_run
    assert main(["sample", "--model", str(file), "--num", "3", "--out", str(tmp_path / "s"), "--trajectory",
                 "--quiet"]) == 0  # fmt: skip
    strip = read_image(tmp_path / "s" / "trajectory.png")
    assert strip.shape[-1] > 7 * 8 and strip.shape[-2] > 3 * 8  # x_T … x_0 (7 states) for 3 images
    meta = json.loads(read_png_metadata(tmp_path / "s" / "00000-seed0.png")["ddpm"])
    assert meta["sampler"] == "cold" and meta["steps"] == 6
    # degrade with the model's own blur, then restore: the level comes from the PNG metadata
    src = _images(tmp_path / "in", n=2, size=8)
    assert main(["data", "degrade", "--model", str(run), "--level", "4", str(src), str(tmp_path / "d")]) == 0
    for sampler in ("cold", "cold_naive", "cold_direct"):
        out = tmp_path / f"r-{sampler}"
        code = main(["restore", "--model", str(file), "--in", str(tmp_path / "d"), "--out", str(out),
                     "--sampler", sampler])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        assert json.loads(read_png_metadata(out / "im0.png")["ddpm"])["level"] == 4
    capsys.readouterr()


def test_samplers_of_the_other_world_are_refused_naming_the_fix(cold_run, tmp_path, capsys):
    _, file = cold_run
    code = main(["sample", "--model", str(file), "--sampler", "ddim", "--num", "1", "--out", str(tmp_path)])
    assert code == 2
    assert "use --sampler cold (Algorithm 2)" in capsys.readouterr().err
