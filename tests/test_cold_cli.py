"""The cold-diffusion commands: `ddpm data degrade` writes what the operator does, with the degradation and
level in each PNG's metadata."""

from __future__ import annotations

import json

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
