"""Image I/O: uint8 conversion, grids, PNG text metadata (A1111 "parameters" + full "ddpm" JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.io.images import format_parameters, make_grid, png_metadata, read_png_metadata, save_png, to_uint8


def test_to_uint8_maps_range_and_layout():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -3.0, float("nan")]).view(1, 1, 8)
    u = to_uint8(x)
    assert u.shape == (1, 8, 1) and u.dtype == torch.uint8
    assert u.flatten().tolist() == [0, 64, 128, 191, 255, 255, 0, 128]
    assert to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)
    with pytest.raises(ValueError, match="already uint8"):
        to_uint8(torch.zeros(3, 2, 2, dtype=torch.uint8))


def test_make_grid_places_images_row_major():
    imgs = torch.stack([torch.full((1, 2, 3), float(i)) for i in range(5)])
    grid = make_grid(imgs, nrow=2, padding=1, pad_value=-1.0)
    assert grid.shape == (1, 3 * 3 + 1, 2 * 4 + 1)
    # image i sits at row i // 2, column i % 2
    for i in range(5):
        r, c = divmod(i, 2)
        y, x = 1 + r * 3, 1 + c * 4
        assert torch.all(grid[:, y : y + 2, x : x + 3] == i)
    assert grid[0, 0, 0] == -1 and grid[0, 7, 5] == -1  # padding and the empty last cell
    with pytest.raises(ValueError, match="nrow"):
        make_grid(imgs, nrow=0)


def test_png_round_trip_pixels_and_metadata(tmp_path):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 6, 7, generator=g) * 2 - 1
    meta = {
        "prompt": "a red circle, large",
        "negative_prompt": "blurry",
        "steps": 20,
        "sampler": "dpmpp_2m",
        "karras": True,
        "guidance_scale": 2.0,
        "seed": 7,
        "width": 7,
        "height": 6,
        "model_hash": "0123456789",
        "spacing": "trailing",
        "eta": 0.0,
    }
    text = png_metadata(meta)
    path = save_png(tmp_path / "a.png", img, text)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (7, 6)
        assert np.array_equal(np.asarray(im), to_uint8(img).numpy())
    back = read_png_metadata(path)
    assert back == text
    assert json.loads(back["ddpm"]) == meta
    assert back["parameters"] == (
        "a red circle, large\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 2, Seed: 7, Size: 7x6, Model hash: 0123456789"
    )
    # the names A1111 prints for the newer samplers and the exponential schedule
    for sampler, extra, name in [("dpmpp_2m_sde", {"exponential": True}, "DPM++ 2M SDE Exponential"),
                                 ("dpmpp_3m", {}, "DPM++ 3M"), ("unipc", {}, "UniPC"),
                                 ("unipc_3", {}, "UniPC"),
                                 ("lms", {"karras": True}, "LMS Karras")]:  # fmt: skip
        other = {**meta, "sampler": sampler, "karras": False, **extra}
        assert f"Sampler: {name}, " in png_metadata(other)["parameters"]


def test_grey_unicode_and_bad_inputs(tmp_path):
    path = save_png(tmp_path / "g.png", torch.zeros(1, 4, 4), {"parameters": "ein Kreis — ö"})
    with Image.open(path) as im:
        assert im.mode == "L"
    assert read_png_metadata(path)["parameters"] == "ein Kreis — ö"
    save_png(tmp_path / "u.png", np.full((3, 3, 3), 200, np.uint8))
    with pytest.raises(ValueError, match=r"\.png"):
        save_png(tmp_path / "x.jpg", torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="one image"):
        save_png(tmp_path / "x.png", torch.zeros(2, 1, 2, 2))
    with pytest.raises(FileNotFoundError):
        read_png_metadata(tmp_path / "missing.png")


def test_parameters_without_optional_fields():
    assert format_parameters({"seed": 3, "steps": 5}) == "\nSteps: 5, Seed: 3"
    assert format_parameters({"prompt": "p", "model": "a:b"}) == 'p\nModel: "a:b"'
    # img2img strength and CLIP skip as the web UIs write them (their "Clip skip" 2 = one layer skipped)
    assert format_parameters({"seed": 1, "strength": 0.6, "clip_skip": 1}) == (
        "\nSeed: 1, Denoising strength: 0.6, Clip skip: 2"
    )
    assert "Clip skip" not in format_parameters({"seed": 1, "clip_skip": 0})


def test_save_generated_writes_each_image_and_a_grid(tmp_path):
    from ddpm.io.images import save_generated

    images = torch.linspace(-1, 1, 3 * 3 * 4 * 4).reshape(3, 3, 4, 4)
    metas = [{"prompt": "p", "seed": 7 + i, "steps": 2} for i in range(3)]
    paths, grid = save_generated(tmp_path / "out", images, metas, start=4, grid_nrow=2)
    assert [p.name for p in paths] == ["00004-seed7.png", "00005-seed8.png", "00006-seed9.png"]
    assert json.loads(read_png_metadata(paths[1])["ddpm"]) == metas[1]
    grid_meta = json.loads(read_png_metadata(grid)["ddpm"])
    assert (grid_meta["grid"], grid_meta["nrow"]) == ("3 images, seeds 7-9", 2)
    paths, grid = save_generated(tmp_path / "sd", images[:1], metas[:1], name="{index:05d}-{seed}.png")
    assert [p.name for p in paths] == ["00000-7.png"] and grid is None
