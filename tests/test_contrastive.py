"""Contrastive encoders (run.task = "contrastive"): the symmetric InfoNCE loss against a direct
computation, the hard negatives of shapes captions, a tiny run that trains, resumes bit for bit and
writes a model file, and `ddpm eval --metric retrieval` on it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ddpm.cli import main
from ddpm.config import load_config
from ddpm.data.shapes import hard_negatives
from ddpm.evaluation.retrieval import evaluate_retrieval
from ddpm.io.clip_files import load_contrastive_file
from ddpm.io.run_folder import load_checkpoint
from ddpm.models.contrastive import info_nce
from ddpm.training import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes_clip.toml"
TINY = ["data.options={num = 64, pair_fraction = 0.9}", "contrastive.width=16", "contrastive.layers=1",
        "contrastive.heads=2", "contrastive.embed_dim=8", "contrastive.patch_size=8", "text.width=16",
        "text.layers=1", "text.heads=2", "train.batch_size=8", "train.warmup_steps=2", "train.log_every=1",
        "train.checkpoint_every=0", "train.ema_decay=0.5"]


def tiny_config(run_dir: Path, name: str, *overrides: str):
    return load_config(CONFIG, [*TINY, f"run.dir={str(run_dir)!r}", f"run.name={name}", *overrides])


def test_info_nce_equals_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(7, 5, generator=g), dim=-1)  # 4 captions, 3 negatives
    s = torch.tensor(math.log(1 / 0.07))
    scale = math.exp(s.item())
    rows = cols = 0.0
    for i in range(4):
        sims = [scale * float(img[i] @ txt[j]) for j in range(7)]
        rows += -(sims[i] - math.log(sum(math.exp(v) for v in sims)))
        sims = [scale * float(img[j] @ txt[i]) for j in range(4)]
        cols += -(sims[i] - math.log(sum(math.exp(v) for v in sims)))
    direct = (rows / 4 + cols / 4) / 2
    assert abs(info_nce(img, txt, s).item() - direct) < 1e-5
    assert abs(info_nce(img, txt[:4], s).item() - info_nce(img, txt, s).item()) > 1e-3  # negatives count


def test_hard_negatives_swap_one_binding():
    c = "a small red circle to the left of a blue square"
    assert hard_negatives(c) == {
        "colour": "a small blue circle to the left of a red square",
        "shape": "a small red square to the left of a blue circle",
        "relation": "a small red circle to the right of a blue square",
    }
    same = hard_negatives("a red circle above a red square")
    assert same["colour"] is None and same["shape"] == "a red square above a red circle"
    assert hard_negatives("a green triangle") == {"colour": None, "shape": None, "relation": None}


def test_a_tiny_run_trains_resumes_exactly_and_is_measured(tmp_path, capsys):
    straight = train(tiny_config(tmp_path, "straight", "train.steps=6"), progress=False)
    resumed = train(tiny_config(tmp_path, "resumed", "train.steps=6"), progress=False, stop_after=3)
    assert load_checkpoint(resumed).step == 3
    train(None, resume=resumed, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a.step == b.step == 6
    for name in ("model", "ema"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.keys() == tb.keys() and "logit_scale" in ta
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    rows = (straight / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith("temperature") and len(rows) == 7

    model, tok, meta = load_contrastive_file(straight)
    assert meta.kind == "contrastive" and meta.training.task == "contrastive"
    # the loss of one fixed batch fell from the seeded initial weights to the trained ones
    from ddpm.data import load_dataset
    from ddpm.models.contrastive import ContrastiveConfig, ContrastiveModel
    from ddpm.training.tasks.contrastive import contrastive_batch_loss

    data = load_dataset("shapes", split="train", num=64, pair_fraction=0.9)
    images, captions = data.as_tensor()[0][:32], data.captions[:32]
    torch.manual_seed(0)
    initial = ContrastiveModel(ContrastiveConfig.from_dict(meta.contrastive["model"])).eval()
    with torch.no_grad():
        before, after = (contrastive_batch_loss(m, tok, images, captions) for m in (initial, model))
    assert after < before - 0.05, (before, after)
    out = tmp_path / "r.json"
    assert main(["eval", "--metric", "retrieval", "--model", str(straight), "--num", "6",
                 "--out", str(out)]) == 0
    splits = json.loads(out.read_text())["metrics"]["retrieval"]["splits"]
    assert set(splits) == {"seen", "heldout"}
    assert set(splits["seen"]) == {"colour", "shape", "relation", "all"}
    assert splits["seen"]["relation"]["n"] == 6 and splits["seen"]["relation"]["chance"] == 0.5
    assert "relation" in capsys.readouterr().out
    # a diffusion-style use of the file is refused with what it is
    assert main(["eval", "--metric", "retrieval"]) == 2
    assert "--model" in capsys.readouterr().err


def test_hard_negatives_need_shapes_captions(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    from ddpm.io.images import save_png

    for i in range(20):
        save_png(folder / f"{i}.png", torch.zeros(3, 16, 16))
        (folder / f"{i}.txt").write_text("a photo of a dog")
    cfg = tiny_config(tmp_path, "folder", f"data.dataset={str(folder)!r}", "data.options={}",
                      "data.image_size=16", "train.steps=1", "train.warmup_steps=0")
    with pytest.raises(ValueError, match="not one; set contrastive.hard_negatives"):
        train(cfg, progress=False)
    cfg = tiny_config(tmp_path, "folder2", f"data.dataset={str(folder)!r}", "data.options={}",
                      "data.image_size=16", "train.steps=1", "train.batch_size=4", "train.warmup_steps=0",
                      "contrastive.hard_negatives=[]")
    assert load_checkpoint(train(cfg, progress=False)).step == 1


class _BagOfWords(torch.nn.Module):
    """A text encoder blind to word order and one image embedding for every image: swaps tie."""

    def __init__(self) -> None:
        super().__init__()
        # small whole numbers, so sums in any word order are exact and a swap ties bit for bit
        self.words = torch.randint(-8, 9, (64, 4), generator=torch.Generator().manual_seed(0)).double()

    def encode_image(self, images):
        return torch.ones(images.shape[0], 4, dtype=torch.float64) / 2

    def encode_text(self, ids, mask):
        return (self.words[ids] * mask[..., None]).sum(1)


def test_retrieval_counts_a_tie_as_a_miss():
    from ddpm.data.shapes import alignment_prompts
    from ddpm.text.word_tokenizer import WordTokenizer

    tok = WordTokenizer.from_captions(alignment_prompts("seen", 50) + alignment_prompts("heldout", 50))
    res = evaluate_retrieval(_BagOfWords(), tok, num=20)
    for split in ("seen", "heldout"):
        assert res[split]["colour"]["accuracy"] == 0.0 and res[split]["shape"]["accuracy"] == 0.0
        assert 0.0 < res[split]["all"]["chance"] < 0.5
