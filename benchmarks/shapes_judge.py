"""The judge the `shapes` benchmarks share (cascade.py, unclip.py): a classifier of the leading object's
colour and shape (18 classes), trained on 4,000 rendered 32 px training scenes and cached on disk by
`ddpm.evaluation.judge_for_tensors`, so every benchmark measures Fréchet distances in the same features."""

from __future__ import annotations

import torch

from ddpm.data.shapes import COLOURS, SHAPES, shapes_dataset
from ddpm.evaluation import Judge, JudgeRecipe, judge_for_tensors

__all__ = ["labels_of", "leading_object_judge"]


def labels_of(ds) -> torch.Tensor:
    """The judge's classes: colour x shape of each scene's leading object, the left or upper one of a pair
    (18 classes; "the object named first" would be either one, by the caption's wording)."""
    leads = [ds.scene(i).leading_first().objects[0] for i in range(len(ds))]
    return torch.tensor([COLOURS.index(o.colour) * len(SHAPES) + SHAPES.index(o.shape) for o in leads])


def leading_object_judge(test_images: torch.Tensor, test_labels: torch.Tensor, train_ds=None) -> Judge:
    """The judge, scored on `test_images` `[N, 3, 32, 32]` and their `labels_of`; trained on `train_ds`
    (default: 4,000 training scenes, seed 1) unless the cache already has it."""
    if train_ds is None:
        train_ds = shapes_dataset(split="train", image_size=32, num=4000, seed=1)
    tx, _ = train_ds.as_tensor()
    return judge_for_tensors(
        "shapes-leading-object", tx.float(), labels_of(train_ds), test_images.float(), test_labels,
        num_classes=len(COLOURS) * len(SHAPES), recipe=JudgeRecipe(epochs=10),
    )
