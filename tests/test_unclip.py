"""unCLIP on a frozen contrastive model: the decoder (data.condition = "clip_image") and the prior
(run.task = "unclip_prior") each train a few steps, resume bit for bit and sample from their files;
`ddpm variations` writes N images with the embedding recorded; `ddpm txt2img --model PRIOR --decoder DEC`
chains them; wrong files and a missing encoder are clear errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ddpm.cli import main
from ddpm.config import load_config
from ddpm.io.images import read_png_metadata, save_png
from ddpm.io.model_file import load_model_file
from ddpm.io.run_folder import load_checkpoint, run_model_file
from ddpm.pipelines import PixelPipeline, SamplingOptions
from ddpm.training import train

sys.path.insert(0, str(Path(__file__).parent))
from test_contrastive import tiny_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COMMON = ["data.options={num = 32, pair_fraction = 0.9}", "train.batch_size=4", "train.warmup_steps=1",
          "train.checkpoint_every=0", "train.ema_decay=0.5", "train.log_every=1", "sample.steps=2",
          "train.sample_every=0"]
DECODER = ["model.model_channels=16", "model.channel_mult=[1, 2]", "model.attention_resolutions=[2]",
           "model.num_head_channels=16", "model.image_embed_tokens=2", "sample.num=4"]
PRIOR = ["unclip.width=16", "unclip.layers=1", "unclip.heads=2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("unclip")
    encoder = train(tiny_config(root, "clip", "train.steps=2"), progress=False)

    def config(kind: str, name: str, *extra: str, enc: Path = encoder):
        over = [*COMMON, *(DECODER if kind == "decoder" else PRIOR), f"unclip.encoder={str(enc)!r}",
                f"run.dir={str(root)!r}", f"run.name={name}", *extra]
        return load_config(CONFIGS / f"shapes_unclip_{kind}.toml", over)

    decoder = train(config("decoder", "decoder", "train.steps=2"), progress=False)
    prior = train(config("prior", "prior", "train.steps=2"), progress=False)
    return {"root": root, "encoder": encoder, "decoder": decoder, "prior": prior, "config": config}


def _same_run(world, kind: str) -> None:
    cfg = world["config"]
    straight = train(cfg(kind, f"{kind}-a", "train.steps=4"), progress=False)
    resumed = train(cfg(kind, f"{kind}-b", "train.steps=4"), progress=False, stop_after=2)
    train(None, resume=resumed, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a.step == b.step == 4
    for name in ("model", "ema"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta), (kind, name)


def test_decoder_trains_resumes_and_samples_from_its_file(world):
    _same_run(world, "decoder")
    tensors, meta = load_model_file(run_model_file(world["decoder"]))
    assert {k.split(".")[0] for k in tensors} == {"unet"}  # the frozen encoder stays out of the file
    enc = meta["conditioning"]["image_encoder"]
    assert meta["conditioning"]["type"] == "clip_image" and enc["path"] == str(world["encoder"].resolve())
    assert meta["unet"]["image_embed_dim"] == enc["embed_dim"] == 8
    pipe = PixelPipeline.load(world["decoder"])
    with pytest.raises(ValueError, match="unCLIP decoder"):
        pipe.generate(2, options=SamplingOptions(steps=2))
    z = torch.randn(2, 8)
    a, _ = pipe.generate(2, image_embeds=z, options=SamplingOptions(steps=2, guidance_scale=2.0))
    b, _ = pipe.generate(2, image_embeds=z.flip(0), options=SamplingOptions(steps=2, guidance_scale=2.0,
                                                                                seed=0))
    assert a.shape == (2, 3, 32, 32) and torch.isfinite(a).all()
    assert not torch.equal(a, b)  # the embedding reaches the UNet


def test_prior_trains_resumes_and_samples_from_its_file(world):
    from ddpm.pipelines.unclip import UnclipPrior

    _same_run(world, "prior")
    tensors, meta = load_model_file(run_model_file(world["prior"]))
    assert {k.split(".")[0] for k in tensors} == {"prior"}
    assert meta["training"]["task"] == "unclip_prior" and meta["diffusion"]["prediction"] == "x0"
    prior = UnclipPrior(world["prior"])
    z = prior.embed(["a red circle", "a blue square"], seed=3, steps=3, guidance_scale=2.0)
    again = prior.embed(["a red circle"], seed=3, steps=3, guidance_scale=2.0)
    assert z.shape == (2, 8) and torch.allclose(z.norm(dim=1), torch.full((2,), 8**0.5))
    assert torch.allclose(z[:1], again, atol=1e-5)  # embedding i depends on seed + i only


def _image(path: Path) -> Path:
    from ddpm.data import load_dataset

    x = load_dataset("shapes", split="train", image_size=32, channels=3, num=4)[1]["image"]
    return save_png(path, x)


def test_variations_cli_writes_n_images_with_the_embedding(world, tmp_path, capsys):
    src = _image(tmp_path / "in.png")
    out = tmp_path / "var"
    assert main(["variations", "--model", str(world["decoder"]), str(src), "--num", "3", "--steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    pngs = sorted(p for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 3 and (out / "grid.png").is_file()
    metas = [json.loads(read_png_metadata(p)["ddpm"]) for p in pngs]
    assert [m["seed"] for m in metas] == [0, 1, 2]
    assert metas[0]["image_embed"] == metas[2]["image_embed"] and len(metas[0]["image_embed"]) == 8
    assert metas[0]["variation_of"] == str(src)


def test_txt2img_runs_prior_then_decoder(world, tmp_path):
    out = tmp_path / "t2i"
    assert main(["txt2img", "--model", str(world["prior"]), "--decoder", str(world["decoder"]),
                 "a red circle", "--num", "2", "--steps", "2", "--prior-steps", "2", "--out", str(out),
                 "--quiet"]) == 0
    metas = [json.loads(read_png_metadata(p)["ddpm"]) for p in sorted(out.glob("0*.png"))]
    assert len(metas) == 2 and metas[0]["prompt"] == "a red circle" and metas[0]["unclip"]["prior_steps"] == 2


def test_wrong_files_and_a_missing_encoder_are_clear_errors(world, tmp_path, capsys):
    dec, prior = str(world["decoder"]), str(world["prior"])
    cases = [
        (["txt2img", "--model", dec, "--decoder", dec, "x"], "must then be an unCLIP prior"),
        (["txt2img", "--model", prior, "x"], "add --decoder"),
        (["txt2img", "--model", prior, "--decoder", prior, "x"], "not an unCLIP decoder"),
        (["variations", "--model", prior, str(_image(tmp_path / "in.png"))], "not an unCLIP decoder"),
        (["sample", "--model", prior], "is an unCLIP prior: it samples image embeddings"),
        (["sample", "--model", dec], "it draws images from image embeddings"),
    ]
    for argv, words in cases:
        assert main([*argv, "--out", str(tmp_path / "o")]) == 2, argv
        assert words in capsys.readouterr().err, argv
    moved = shutil.copytree(world["encoder"], tmp_path / "enc")
    lonely = train(world["config"]("decoder", "lonely", "train.steps=1", enc=moved), progress=False)
    shutil.rmtree(moved)
    assert main(["variations", "--model", str(lonely), str(tmp_path / "in.png"), "--out",
                 str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "which is missing" in err and str(moved) in err
    with pytest.raises(FileNotFoundError, match="unclip.encoder"):
        train(world["config"]("prior", "noenc", "train.steps=1", enc=tmp_path / "nope"), progress=False)


def test_unet_image_embed_checks():
    from ddpm.models.unet import UNet, UNetConfig

    base = dict(model_channels=16, channel_mult=(1, 2), attention_resolutions=(2,), num_head_channels=16,
                num_res_blocks=1, norm_groups=8)
    with pytest.raises(ValueError, match="needs context_dim"):
        UNetConfig(image_embed_dim=8, **base)
    plain = UNet(UNetConfig(**base))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="not an unCLIP decoder"):
        plain(x, t, image_embed=torch.zeros(2, 8))
    dec = UNet(UNetConfig(image_embed_dim=8, context_dim=8, image_embed_tokens=3, **base))
    with pytest.raises(ValueError, match=r"pass image_embed \[B=2, 8\]"):
        dec(x, t)
    assert dec(x, t, image_embed=torch.randn(2, 8)).shape == x.shape
