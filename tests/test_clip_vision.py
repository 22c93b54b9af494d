"""CLIP's vision tower and CLIP score: numerical parity with transformers' CLIPVisionModelWithProjection and
CLIPModel on tiny random configs saved the ways checkpoints come, the preprocessing of CLIPImageProcessor,
and `ddpm eval --metric clip-score` on PNGs whose metadata holds their prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data.clip_images import clip_preprocess
from ddpm.io.clip_files import load_clip, load_clip_vision
from ddpm.io.keymaps import clip_from_transformers, clip_to_transformers
from ddpm.models.clip_vision import CLIPVisionConfig, CLIPVisionModelWithProjection, clip_score

transformers = pytest.importorskip("transformers")

VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=30,
              patch_size=6)
TEXT = dict(vocab_size=514, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, eos_token_id=2, bos_token_id=512, pad_token_id=513)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _perturb_norms(model: torch.nn.Module) -> None:
    with torch.no_grad():  # non-trivial layer norms and class embedding, so every parameter is checked
        for n, p in model.named_parameters():
            if "norm" in n or "class_embedding" in n:
                p.add_(0.1 * torch.randn_like(p))


def _write_byte_vocab(folder: Path) -> None:
    """A BPE vocabulary of the 512 byte symbols and the two specials, no merges (ids 512, 513)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="module")
def vision_folder(tmp_path_factory) -> tuple[transformers.CLIPVisionModelWithProjection, Path]:
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(projection_dim=24, hidden_act="quick_gelu", **VISION)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    _perturb_norms(model)
    folder = tmp_path_factory.mktemp("clip_vision")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> tuple[transformers.CLIPModel, Path]:
    torch.manual_seed(1)
    cfg = transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=24)
    model = transformers.CLIPModel(cfg).eval()
    _perturb_norms(model)
    with torch.no_grad():  # this random model's image and text embeddings point apart; turn them together
        model.text_projection.weight.neg_()
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    _write_byte_vocab(folder)
    return model, folder


def test_vision_tower_matches_transformers(vision_folder):
    reference, folder = vision_folder
    ours = load_clip_vision(folder)
    x = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = reference(pixel_values=x)
        ref_pooled = reference.vision_model(pixel_values=x).pooler_output
        out = ours(x)
    assert _rel_err(out.image_embeds, ref.image_embeds) < 1e-5
    assert _rel_err(out.last_hidden_state, ref.last_hidden_state) < 1e-5
    assert _rel_err(out.pooled, ref_pooled) < 1e-5


def test_our_vision_weights_load_into_transformers(tmp_path):
    torch.manual_seed(3)
    config = CLIPVisionConfig(image_size=30, patch_size=6, width=32, layers=2, heads=4, intermediate=48,
                              projection_dim=24, act="gelu")
    ours = CLIPVisionModelWithProjection(config).eval()
    from safetensors.torch import save_file

    save_file(ours.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config.to_transformers()))
    reference = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        assert _rel_err(ours(x).image_embeds, reference(pixel_values=x).image_embeds) < 1e-5
    assert CLIPVisionConfig.from_transformers(config.to_transformers()) == config


def test_whole_clip_matches_transformers_and_keys_round_trip(clip_folder):
    reference, folder = clip_folder
    model, tokenizer = load_clip(folder)
    x = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(4))
    ids = tokenizer(["a red circle", "two blue squares, left"], max_length=16)
    with torch.no_grad():
        ref = reference(input_ids=ids, pixel_values=x)
        image, text = model.encode_image(x), model.encode_text(ids)
    assert _rel_err(image / image.norm(dim=-1, keepdim=True), ref.image_embeds) < 1e-5
    assert _rel_err(text / text.norm(dim=-1, keepdim=True), ref.text_embeds) < 1e-5
    assert torch.allclose(model.logit_scale, reference.logit_scale)
    theirs = reference.state_dict()
    back = clip_to_transformers(model.state_dict())
    assert set(back) == {k for k in theirs if not k.endswith("position_ids")}
    with pytest.raises(ValueError, match="not parts of a transformers CLIP"):
        clip_from_transformers({"decoder.weight": torch.zeros(1)})


def test_preprocessing_matches_clip_image_processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              ((300, 451), (97, 64), (224, 224), (32, 32))]
    images.append(images[1].convert("L"))
    processor = CLIPImageProcessorPil()
    for im in images:
        ref = processor(images=im, return_tensors="pt").pixel_values
        ours = clip_preprocess([im])
        assert ours.shape == ref.shape == (1, 3, 224, 224)
        assert (ours - ref).abs().max().item() < 1e-5
    small = CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 30, "width": 30})
    ref = small(images=images[0], return_tensors="pt").pixel_values
    assert (clip_preprocess([images[0]], size=40, crop=30) - ref).abs().max().item() < 1e-5


def test_clip_score_is_100_times_clamped_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert torch.allclose(clip_score(a, b), torch.tensor([100.0, 100 * 2**-0.5, 0.0]))


def test_eval_clip_score_reads_prompts_from_pngs(clip_folder, tmp_path, capsys):
    from ddpm.cli import main
    from ddpm.io.images import png_metadata, save_png

    reference, folder = clip_folder
    prompts = ["a red circle", "a green square above a blue triangle", "two dogs", "a lighthouse at dusk",
               "blue", "a red square to the left of a green circle"]
    rng = np.random.default_rng(5)
    out = tmp_path / "images"
    for i, p in enumerate(prompts):
        pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        save_png(out / f"{i}.png", pixels, png_metadata({"prompt": p, "seed": i}))
    assert main(["eval", "--metric", "clip-score", "--clip", str(folder), "--images", str(out),
                 "--out", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())["metrics"]["clip-score"]
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    pil = [Image.open(out / f"{i}.png").convert("RGB") for i in range(len(prompts))]
    px = CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})(
        images=pil, return_tensors="pt").pixel_values
    _, tok = load_clip(folder)
    with torch.no_grad():
        ref = reference(input_ids=tok(prompts, max_length=16), pixel_values=px)
    cos = (ref.image_embeds * ref.text_embeds).sum(-1)
    assert (cos > 0).all()  # (the clamp itself: test_clip_score_is_100_times_clamped_cosine)
    expected = (100 * cos.clamp_min(0)).mean().item()
    assert abs(result["value"] - expected) < 1e-3
    assert result["num"] == len(prompts)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out / "9.png")  # a PNG without a prompt
    assert main(["eval", "--metric", "clip-score", "--clip", str(folder), "--images", str(out)]) == 2
    assert "no prompt" in capsys.readouterr().err
