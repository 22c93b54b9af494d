"""Reranking (DALL·E): `ddpm txt2img --candidates N --rerank MODEL --num k` keeps the k best-scoring of N
candidates, best first, with every candidate's score in the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ddpm.cli import main
from ddpm.config import load_config
from ddpm.io.images import read_png_metadata
from ddpm.pipelines import PixelPipeline, SamplingOptions
from ddpm.pipelines.rerank import Scorer, load_scorer, rerank
from ddpm.training import train

CLIP_TOML = Path(__file__).resolve().parents[1] / "configs" / "shapes_clip.toml"
TEXT = ["data.dataset=shapes", "data.image_size=16", "data.condition=text", "data.options={num = 32}",
        "model.model_channels=16", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
        "model.attention_resolutions=[2]", "model.norm_groups=8", "model.num_head_channels=16",
        "diffusion.num_timesteps=50", "train.num_threads=1", "train.warmup_steps=0", "train.batch_size=8",
        "train.steps=2", "train.sample_every=0", "train.log_every=1", "sample.steps=2"]
CLIP = ["data.options={num = 32, pair_fraction = 0.9}", "data.image_size=16", "contrastive.width=16",
        "contrastive.layers=1", "contrastive.heads=2", "contrastive.embed_dim=8", "contrastive.patch_size=8",
        "text.width=16", "text.layers=1", "text.heads=2", "train.batch_size=8", "train.warmup_steps=0",
        "train.steps=2", "train.checkpoint_every=0", "contrastive.hard_negatives=[]"]


def test_rerank_keeps_the_best_of_each_prompt_in_order():
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    metas = [{"prompt": p, "seed": i} for i, p in enumerate("aaabbb")]
    scores = torch.tensor([1.0, 3.0, 2.0, -1.0, -3.0, 0.5])
    fake = type("Fake", (Scorer,), {"__call__": lambda self, x, p: scores})("fake", None, None)
    kept, meta = rerank(images, metas, fake, keep=2)
    assert [m["seed"] for m in meta] == [1, 2, 5, 3]
    assert torch.equal(kept[:, 0, 0, 0], torch.tensor([1.0, 2.0, 5.0, 3.0]))
    assert [m["rerank"]["rank"] for m in meta] == [0, 1, 0, 1]
    assert meta[0]["rerank"]["candidates"] == [{"seed": 0, "score": 1.0}, {"seed": 1, "score": 3.0},
                                              {"seed": 2, "score": 2.0}]


def test_txt2img_reranks_candidates_with_a_contrastive_model(tmp_path, capsys):
    t2i = train(load_config(None, [*TEXT, f"run.dir={str(tmp_path)!r}", "run.name=t2i"]), progress=False)
    clip = train(load_config(CLIP_TOML, [*CLIP, f"run.dir={str(tmp_path)!r}", "run.name=clip"]),
                 progress=False)
    prompt = "a red circle to the left of a blue square"
    out = tmp_path / "out"
    assert main(["txt2img", "--model", str(t2i), prompt, "--candidates", "5", "--num", "2", "--rerank",
                 str(clip), "--seed", "3", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    metas = [json.loads(read_png_metadata(p)["ddpm"]) for p in sorted(out.glob("0*.png"))]
    assert len(metas) == 2
    cands = metas[0]["rerank"]["candidates"]
    assert [c["seed"] for c in cands] == [3, 4, 5, 6, 7]
    assert len({c["score"] for c in cands}) == 5  # distinct scores, so the order is the scorer's
    best = sorted(cands, key=lambda c: -c["score"])[:2]
    assert [m["seed"] for m in metas] == [c["seed"] for c in best]
    assert [m["rerank"]["rank"] for m in metas] == [0, 1]
    # the scores are those of the scorer on the same candidates generated without reranking
    pipe = PixelPipeline.load(t2i, device="cpu")
    images, _ = pipe.generate(5, prompts=prompt, options=SamplingOptions(steps=2, seed=3))
    scores = load_scorer(clip)(images, [prompt] * 5)
    assert torch.allclose(scores, torch.tensor([c["score"] for c in cands]), atol=1e-3)
    capsys.readouterr()
    assert main(["txt2img", "--model", str(t2i), prompt, "--candidates", "1", "--num", "2", "--rerank",
                 str(clip), "--out", str(tmp_path / "o2")]) == 2
    assert "fewer than --num" in capsys.readouterr().err
    assert main(["txt2img", "--model", str(t2i), prompt, "--rerank", str(clip), "--out",
                 str(tmp_path / "o3")]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["txt2img", "--model", str(t2i), prompt, "--candidates", "2", "--rerank", str(clip),
                 "--upscaler", str(t2i), "--out", str(tmp_path / "o4")]) == 2
    assert "not applied to cascades" in capsys.readouterr().err


def test_sd_txt2img_reranks_too(tmp_path, capsys):
    from ddpm.io.sd import StableDiffusionModels, save_single_file
    from ddpm.io.sd_layout import SchedulerConfig
    from ddpm.models.autoencoder import AutoencoderKL, AutoencoderKLConfig
    from ddpm.models.text_encoder import CLIPTextConfig, CLIPTextModel
    from ddpm.models.unet import UNet, UNetConfig
    from ddpm.text import CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet(UNetConfig.sd15(model_channels=32, channel_mult=(1, 2), attention_resolutions=(1,),
                                num_res_blocks=1, context_dim=64))
    with torch.no_grad():
        unet.out[-1].weight.normal_(0, 0.05)
    vae = AutoencoderKL(AutoencoderKLConfig.sd15(base_channels=32, channel_mult=(1, 2), num_res_blocks=1))
    text = CLIPTextModel(CLIPTextConfig(width=64, layers=1, heads=1, intermediate=64))
    models = StableDiffusionModels(unet, vae, text, CLIPTokenizer.from_bpe_file(), SchedulerConfig(), "", "")
    sd = save_single_file(models, tmp_path / "tiny-sd.safetensors")
    clip = train(load_config(CLIP_TOML, [*CLIP, f"run.dir={str(tmp_path)!r}", "run.name=clip"]),
                 progress=False)
    assert main(["txt2img", "--model", str(sd), "a red circle", "--size", "16x16", "--steps", "2",
                 "--candidates", "3", "--num", "1", "--rerank", str(clip), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0, capsys.readouterr().err
    files = sorted((tmp_path / "o").glob("*.png"))
    meta = json.loads(read_png_metadata(files[0])["ddpm"])
    assert len(files) == 1 and len(meta["rerank"]["candidates"]) == 3
    assert meta["rerank"]["score"] == max(c["score"] for c in meta["rerank"]["candidates"])
