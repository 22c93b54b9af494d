"""Writes the legacy model files of `tests/test_legacy_files.py` (run once, at commit cd827a0).

The files are tiny (a class-conditional pixel UNet, a text-to-image UNet with its word encoder, a KL
autoencoder) and each comes with the images the code of that commit generated from it, so the test
checks that a file written before a change still loads *and* still gives the same images. Rerunning this
script rewrites them with today's code, which defeats that purpose: do it only for a new format version.

    PYTHONPATH=tests .venv/bin/python tests/data/legacy/make.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ddpm.io.vae_files import load_autoencoder_file
from ddpm.pipelines import PixelPipeline, SamplingOptions
from ddpm.training import export_model, train
from test_training import tiny_config
from test_txt2img import TINY_TEXT
from test_vae_training import tiny_config as vae_config

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cls_run = train(tiny_config(root, "cls", "data.condition=class", "train.steps=3"), progress=False)
        export_model(cls_run, HERE / "class.safetensors")
        text_run = train(tiny_config(root, "text", *TINY_TEXT, "train.sample_every=0"), progress=False)
        export_model(text_run, HERE / "text.safetensors")
        vae_run = train(vae_config(root, "vae", "train.steps=2", "train.log_every=0"), progress=False)
        export_model(vae_run, HERE / "vae.safetensors")
    cls = PixelPipeline.load(HERE / "class.safetensors", device="cpu")
    a, _ = cls.generate(3, class_labels=[0, 4, 9],
        options=SamplingOptions(seed=5, steps=3, guidance_scale=2.0))
    txt = PixelPipeline.load(HERE / "text.safetensors", device="cpu")
    b, _ = txt.generate(2, prompts=["a red circle", "a blue square above a green circle"],
        options=SamplingOptions(seed=7, steps=3, guidance_scale=2.0))
    vae, _ = load_autoencoder_file(HERE / "vae.safetensors")
    x = torch.linspace(-1, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x))
    save_file({"class": a.contiguous(), "text": b.contiguous(), "vae": rec.contiguous(), "vae_input": x},
              str(HERE / "expected.safetensors"))
    shutil.rmtree(HERE / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
