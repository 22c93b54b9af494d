"""Model files written before the architecture change still load and give the same images.

`tests/data/legacy/` holds tiny files written by the code of commit cd827a0 (`make.py` there) and the
images that code generated from them; a change to loading, metadata or sampling that alters either fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpm.io.vae_files import load_autoencoder_file
from ddpm.pipelines import PixelPipeline, SamplingOptions

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


@pytest.fixture(scope="module")
def expected():
    return load_file(str(LEGACY / "expected.safetensors"))


def test_a_class_conditional_file_of_the_old_code_gives_its_images(expected):
    pipe = PixelPipeline.load(LEGACY / "class.safetensors", device="cpu")
    images, meta = pipe.generate(3, class_labels=[0, 4, 9],
        options=SamplingOptions(seed=5, steps=3, guidance_scale=2.0))
    torch.testing.assert_close(images, expected["class"], rtol=0, atol=1e-5)
    assert [m["class_label"] for m in meta] == [0, 4, 9]


def test_a_text_to_image_file_of_the_old_code_gives_its_images(expected):
    pipe = PixelPipeline.load(LEGACY / "text.safetensors", device="cpu")
    prompts = ["a red circle", "a blue square above a green circle"]
    images, meta = pipe.generate(2, prompts=prompts,
        options=SamplingOptions(seed=7, steps=3, guidance_scale=2.0))
    torch.testing.assert_close(images, expected["text"], rtol=0, atol=1e-5)
    assert [m["prompt"] for m in meta] == prompts


def test_an_autoencoder_file_of_the_old_code_reconstructs_as_before(expected):
    vae, _ = load_autoencoder_file(LEGACY / "vae.safetensors")
    with torch.no_grad():
        rec = vae.decode(vae.encode(expected["vae_input"]))
    torch.testing.assert_close(rec, expected["vae"], rtol=0, atol=1e-5)
