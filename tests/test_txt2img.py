"""Text-to-image end to end: a tiny text model trains a few steps, `PixelPipeline` and `ddpm txt2img`
generate from it (metadata, seeds, guidance, empty / long / unknown prompts); SD checkpoints go to the SD
path."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import ddpm
from ddpm.cli import main
from ddpm.conditioning.text import WordTextConditioner
from ddpm.config import load_config
from ddpm.data import register_builtin
from ddpm.data.shapes import ShapesDataset
from ddpm.io.images import read_png_metadata
from ddpm.io.model_file import file_hash, load_model_file
from ddpm.pipelines import PixelPipeline, SamplingOptions
from ddpm.training import export_model, train
from ddpm.training.data import BatchSource

FACTORY_CALLS: list[dict] = []
RELATIONS_DRAWN = {"relations": ("to the left of", "to the right of", "above", "below")}


def _tiny_shapes(*, pair_fraction: float = 0.6, **kw):
    FACTORY_CALLS.append({"pair_fraction": pair_fraction, **kw})
    return ShapesDataset(split="train", image_size=16, num=24, seed=0, pair_fraction=pair_fraction,
                         **RELATIONS_DRAWN)


register_builtin("tiny_shapes_for_tests", _tiny_shapes, replace=True)

TINY_TEXT = [
    "data.dataset=tiny_shapes_for_tests",
    "data.condition=text",
    "data.cond_drop_prob=0.25",
    "data.options={pair_fraction = 0.9}",
    "model.model_channels=16",
    "model.channel_mult=[1, 2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[2]",
    "model.norm_groups=8",
    "model.num_head_channels=16",
    "diffusion.num_timesteps=100",
    "train.num_threads=1",
    "train.warmup_steps=1",
    "train.batch_size=8",
    "train.steps=3",
    "train.sample_every=3",
    "train.log_every=1",
    "sample.num=8",
    "sample.steps=2",
    "sample.guidance_scale=2",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [*TINY_TEXT, f"run.dir={str(root)!r}", "run.name=txt"])
    return train(cfg, progress=False)


@pytest.fixture(scope="module")
def pipe(run):
    p = PixelPipeline.load(run, device="cpu")
    # Three steps leave the UNet's zero-initialised layers (output conv, attention projections) near zero:
    # give them weight so that outputs depend visibly on the prompt.
    torch.manual_seed(1)
    for prm in p.unet.parameters():
        if prm.abs().max() < 1e-2:
            prm.data.normal_(0, 0.05)
    return p


def test_a_tiny_text_model_trains_and_stores_its_encoder(run):
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and all("nan" not in r for r in rows[1:])
    tensors, meta = load_model_file(run / "checkpoints" / "step-3" / "ema.safetensors")
    assert any(k.startswith("text_encoder.encoder.") for k in tensors)
    enc = meta["conditioning"]["text_encoder"]
    assert meta["conditioning"]["type"] == "text" and enc["kind"] == "word_transformer"
    assert "circle" in enc["tokenizer"]["vocab"]
    assert meta["unet"]["context_dim"] == enc["config"]["width"]
    assert (run / "samples" / "step-3.png").is_file()
    # data.options reached the dataset's factory and travel in the model file
    assert FACTORY_CALLS and all(c["pair_fraction"] == 0.9 and c["split"] == "train" for c in FACTORY_CALLS)
    assert meta["data"]["options"] == {"pair_fraction": 0.9}


def test_resume_refuses_captions_whose_words_changed(run, tmp_path, monkeypatch):
    """Captions edited between start and resume (here: a relation word gone) change the vocabulary: the
    resume must say so, not fail inside load_state_dict."""
    copy = tmp_path / "txt"
    shutil.copytree(run, copy)
    assert train(None, resume=copy, progress=False) == copy  # same captions: resumes (already finished)
    monkeypatch.setitem(RELATIONS_DRAWN, "relations", ("above", "below"))
    with pytest.raises(ValueError, match=r"captions changed .* gone: left, of, right, the"):
        train(None, resume=copy, progress=False)


def test_caption_curriculum_reaches_the_model_by_step_and_resumes_exactly(tmp_path, monkeypatch):
    """shapes' lead_first_steps / rephrase vary captions with the step: the trainer must hand the model the
    step's captions, and a resumed run must see the ones an uninterrupted run saw."""
    seen: list[tuple[int, list[str]]] = []
    batches = BatchSource.batches

    def spy(self, idx, step):
        out = batches(self, idx, step)
        seen.append((step, [c for b in out for c in b["caption"]]))
        return out

    monkeypatch.setattr(BatchSource, "batches", spy)
    opts = [*TINY_TEXT, "data.dataset=shapes", "data.image_size=16", "train.steps=4", "train.sample_every=0",
            "data.options={num = 24, pair_fraction = 1.0, lead_first_steps = 2, rephrase = true}",
            f"run.dir={str(tmp_path)!r}"]
    train(load_config(None, [*opts, "run.name=straight"]), progress=False)
    straight, seen[:] = list(seen), []
    train(load_config(None, [*opts, "run.name=resumed"]), progress=False, stop_after=2)
    train(None, resume=tmp_path / "resumed", progress=False)
    assert [s for s, _ in straight] == [0, 1, 2, 3] and seen == straight
    scenes = ShapesDataset(image_size=16, num=24, pair_fraction=1.0).scenes
    leading = {s.leading_first().caption for s in scenes}
    assert all(c in leading for _, caps in straight[:2] for c in caps)
    assert any(c not in leading for _, caps in straight[2:] for c in caps)  # rephrased: trailing-first too


def test_pipeline_loads_the_trained_text_encoder(run):
    p = PixelPipeline.load(run, device="cpu")
    assert isinstance(p.conditioner, WordTextConditioner)
    tensors, _ = load_model_file(run / "checkpoints" / "step-3" / "ema.safetensors")
    key = "text_encoder.encoder.token_embedding.weight"
    assert torch.equal(p.conditioner.encoder.token_embedding.weight, tensors[key])
    assert p.model_hash == file_hash(run / "checkpoints" / "step-3" / "ema.safetensors")


def test_image_i_depends_on_seed_plus_i_only(pipe):
    prompts = ["a red circle", "a blue square above a green triangle", "a white triangle"]
    a, meta = pipe.generate(3, prompts=prompts, batch_size=2,
        options=SamplingOptions(seed=5, steps=3, guidance_scale=3))
    b, _ = pipe.generate(1, prompts=prompts[1], options=SamplingOptions(seed=6, steps=3, guidance_scale=3))
    assert a.shape == (3, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.allclose(a[1], b[0], atol=1e-5)
    assert [m["seed"] for m in meta] == [5, 6, 7] and meta[1]["prompt"] == prompts[1]


def test_guidance_scale_one_is_the_conditional_model(pipe):
    """s = 1 samples the conditional model alone: equal to `ddpm.sample` with the prompt's context and no
    uncond, and independent of the negative prompt."""
    prompt = "a small yellow circle to the left of a purple square"
    x, _ = pipe.generate(2, prompts=prompt, options=SamplingOptions(seed=0, steps=4, guidance_scale=1.0))
    y, _ = pipe.generate(2, prompts=prompt, negative_prompt="a red square",
        options=SamplingOptions(seed=0, steps=4, guidance_scale=1.0))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    noise = torch.stack([torch.randn(3, 16, 16, generator=g) for g in gens])
    with torch.no_grad():
        ctx = pipe.encode([prompt, prompt])
        ref = ddpm.sample(pipe.unet, noise, schedule=pipe.schedule, steps=4, prediction="eps",
                          cond={"context": ctx}, clip_x0="static", generator=gens).clamp(-1, 1)  # fmt: skip
    assert torch.equal(x, y)
    assert torch.allclose(x, ref, atol=1e-6)


def test_negative_prompt_replaces_the_empty_prompt_under_guidance(pipe):
    kw = dict(prompts="a red circle", options=SamplingOptions(seed=0, steps=3, guidance_scale=4.0))
    plain, meta = pipe.generate(1, **kw)
    neg, meta_neg = pipe.generate(1, negative_prompt="a green circle", **kw)
    same_as_empty, _ = pipe.generate(1, negative_prompt="", **kw)
    assert torch.equal(plain, same_as_empty)
    assert not torch.allclose(plain, neg, atol=1e-4)
    assert meta[0]["negative_prompt"] == "" and meta_neg[0]["negative_prompt"] == "a green circle"


def test_empty_long_and_unknown_prompts(pipe):
    empty, meta = pipe.generate(1, prompts="", options=SamplingOptions(seed=0, steps=2, guidance_scale=3.0))
    assert torch.isfinite(empty).all() and meta[0]["prompt"] == ""
    long = " ".join(["a large red circle"] * 5)  # 20 words; 14 fit the context
    with pytest.warns(UserWarning, match=r"6 word\(s\) dropped"):
        pipe.generate(1, prompts=long, options=SamplingOptions(seed=0, steps=2))
    with pytest.warns(UserWarning, match="'hexagon'"):
        img, _ = pipe.generate(1, prompts="a red hexagon", options=SamplingOptions(seed=0, steps=2))
    assert torch.isfinite(img).all()
    with pytest.raises(ValueError, match="one per image"):
        pipe.generate(3, prompts=["a", "b"], options=SamplingOptions(steps=2))


def test_txt2img_cli_writes_pngs_with_metadata(run, tmp_path, capsys):
    model = export_model(run, tmp_path / "txt.safetensors")
    out = tmp_path / "out"
    argv = ["txt2img", "--model", str(model), "a red circle above a blue square",
            "--negative", "a green square", "--guidance", "5", "--steps", "3", "--sampler", "dpmpp_2m",
            "--seed", "7", "--num", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    meta = json.loads(read_png_metadata(out / "00001-seed8.png")["ddpm"])
    assert meta["prompt"] == "a red circle above a blue square"
    assert meta["negative_prompt"] == "a green square"
    assert (meta["seed"], meta["steps"], meta["sampler"], meta["guidance_scale"]) == (8, 3, "dpmpp_2m", 5.0)
    assert (meta["width"], meta["height"], meta["model_hash"]) == (16, 16, file_hash(model))
    assert "a red circle above a blue square" in read_png_metadata(out / "grid.png")["parameters"]
    # No prompt: the unconditional model.
    assert main(["txt2img", "--model", str(run), "--steps", "2", "--num", "1", "--out", str(tmp_path / "u"),
                 "--quiet"]) == 0  # fmt: skip


def test_txt2img_sends_stable_diffusion_checkpoints_to_the_sd_path_and_refuses_other_files(tmp_path, capsys):
    # An SD single file goes to the SD pipeline: a file with only one UNet tensor fails there, naming the
    # missing parts, rather than being read as a ddpm model.
    sd = tmp_path / "v1-5.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(sd))
    assert main(["txt2img", "--model", str(sd), "a cat", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "ddpm txt2img: error:" in err and "ddpm model" not in err
    other = tmp_path / "weights.pt"
    other.write_bytes(b"not read")
    assert main(["txt2img", "--model", str(other), "a cat", "--out", str(tmp_path / "o")]) == 2
    assert "neither a ddpm model" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        PixelPipeline.load(tmp_path / "missing")


def test_eval_alignment_scores_a_text_model(run, tmp_path, capsys):
    """`ddpm eval --metric alignment` loads a text model through the CLI and prints the per-attribute table.
    The tiny model was trained on a registered stand-in of `shapes`; its file is relabelled so the metric's
    dataset check (shapes only) lets it through — the numbers themselves are not judged here."""
    from ddpm.io.model_file import save_model_file

    tensors, meta = load_model_file(export_model(run, tmp_path / "tiny.safetensors"))
    model = save_model_file(tmp_path / "shapes.safetensors", tensors, {**meta, "data": {
        **meta["data"], "dataset": "shapes"}})  # fmt: skip
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", str(model), "--metric", "alignment", "--num", "4", "--steps", "2", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "alignment" in printed and "relation" in printed
    result = json.loads(out.read_text())["metrics"]["alignment"]
    assert 0.0 <= result["value"] <= 1.0
    # The class-model metrics do not apply to a text model and are refused by name.
    assert main(["eval", "--model", str(model), "--metric", "accuracy", "--num", "4"]) == 2
