"""Zero-shot image -> caption retrieval among hard negatives on held-out `shapes` scenes: how well a
contrastive model binds attributes and relations (the "bag of words" test of Yuksekgonul et al. 2023, on
this dataset's grammar).

For each two-object scene of the seen and the held-out combinations (`data.shapes`: `test_seen`,
`test_heldout`), the image is compared with its true caption and with each edited false one
(`data.shapes.hard_negatives`): the colours swapped between the objects, the shapes swapped, the relation
reversed. Accuracy of a kind is the share of scenes whose true caption scores strictly higher than that
negative (chance 50%); "all" asks it to beat every negative of the scene at once (chance 1 / (1 + k)).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.shapes import NEGATIVE_KINDS, hard_negatives, render, scene_for
from .metrics import MetricResult

__all__ = ["retrieval_suite", "evaluate_retrieval", "evaluate_retrieval_file", "format_retrieval", "SPLITS"]

SPLITS = {"seen": "test_seen", "heldout": "test_heldout"}


def retrieval_suite(
    split: str, n: int, seed: int = 0, *, image_size: int = 32
) -> tuple[torch.Tensor, list[str]]:
    """`n` two-object scenes of `split` ("seen" / "heldout"): images `[n, 3, S, S]` in [-1, 1], captions."""
    if split not in SPLITS:
        raise ValueError(f"retrieval split must be one of {list(SPLITS)}, got {split!r}")
    scenes = [scene_for(SPLITS[split], i, seed + 0x5EED, kind="pair") for i in range(n)]
    pixels = np.stack([render(s, image_size) for s in scenes])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return images, [s.caption for s in scenes]


@torch.no_grad()
def _scores(model: Any, tokenizer: Any, images: torch.Tensor, texts: Sequence[str], *,
            batch_size: int = 256) -> torch.Tensor:
    """Cosine similarity of image i with text i, `[n]`."""
    out = []
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(list(texts[i:i + batch_size]), warn=False)
        img = model.encode_image(images[i:i + batch_size])
        txt = model.encode_text(tok.input_ids, tok.attention_mask)
        out.append((img * txt).sum(-1))
    return torch.cat(out)


def evaluate_retrieval(
    model: Any, tokenizer: Any, *, image_size: int = 32, num: int = 200, seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{split: {kind: {"accuracy", "n", "chance"}}} for kinds colour, shape, relation and "all"."""
    results: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        images, captions = retrieval_suite(split, num, seed, image_size=image_size)
        true = _scores(model, tokenizer, images, captions)
        edits = [hard_negatives(c) for c in captions]
        beaten = torch.ones(num, dtype=torch.bool)
        count = torch.zeros(num)
        row: dict[str, Any] = {}
        for kind in NEGATIVE_KINDS:
            idx = [i for i, e in enumerate(edits) if e[kind] is not None]
            neg = _scores(model, tokenizer, images[idx], [edits[i][kind] for i in idx])
            wins = true[idx] > neg
            beaten[idx] &= wins
            count[idx] += 1
            row[kind] = {"accuracy": float(wins.float().mean()), "n": len(idx), "chance": 0.5}
        row["all"] = {"accuracy": float(beaten.float().mean()), "n": num,
                      "chance": float((1.0 / (1.0 + count)).mean())}
        results[split] = row
    return results


def format_retrieval(results: dict[str, dict[str, Any]]) -> str:
    kinds = (*NEGATIVE_KINDS, "all")
    lines = ["negative kind   " + "  ".join(f"{s + ' (n)':>16}" for s in results) + "    chance"]
    for kind in kinds:
        cells = "  ".join(f"{100 * results[s][kind]['accuracy']:9.1f}% ({results[s][kind]['n']:>3})"
                          for s in results)
        chance = 100 * next(iter(results.values()))[kind]["chance"]
        lines.append(f"{kind:<15} {cells}    {chance:5.1f}%")
    return "\n".join(lines)


def evaluate_retrieval_file(path: str | Path, *, num: int = 200, seed: int = 0) -> MetricResult:
    """`evaluate_retrieval` of a contrastive model file (or run folder) as a `MetricResult`."""
    from ..io.clip_files import load_contrastive_file

    model, tokenizer, meta = load_contrastive_file(path)
    results = evaluate_retrieval(model, tokenizer, image_size=int(meta.data.image_size or 32), num=num,
                                 seed=seed)
    mean = float(np.mean([results[s][k]["accuracy"] for s in results for k in NEGATIVE_KINDS]))
    return MetricResult("retrieval", mean,
                        f"image -> caption top-1 among hard negatives, mean over kinds and splits of {num} "
                        "two-object scenes each (chance 0.5)",
                        {"splits": results, "table": format_retrieval(results)})
