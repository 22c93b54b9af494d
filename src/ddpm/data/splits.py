"""Deterministic held-out splits (train / test), stratified by class where there are classes.

The split is a fixed function of the dataset (its size and labels, in its stored order) and the
held-out fraction: it does not depend on the training seed, so every run, whatever its seed,
is evaluated on the same held-out images. Each class contributes its share of the test set
(largest-remainder rounding, so the total is exactly round(fraction * N)), and every class keeps
at least one training image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["holdout_split", "SPLITS", "SPLIT_SEED"]

SPLITS = ("train", "test", "all")
# Fixed on purpose (see the module docstring); changing it changes every project's test sets.
SPLIT_SEED = 20_200_619  # the day the DDPM paper appeared on arXiv


def _check_fraction(fraction: float) -> float:
    f = float(fraction)
    if not 0.0 < f < 1.0:
        raise ValueError(f"holdout_fraction must lie strictly between 0 and 1, got {fraction}")
    return f


def holdout_split(
    n_or_labels: int | Tensor, *, fraction: float = 0.1, seed: int = SPLIT_SEED
) -> tuple[Tensor, Tensor]:
    """Disjoint sorted int64 index tensors `(train [N - k], test [k])`, k = round(fraction * N).

    Pass the labels `[N]` to stratify by class, or just N for an unlabelled dataset.
    """
    f = _check_fraction(fraction)
    if isinstance(n_or_labels, int):
        n, labels = n_or_labels, None
    else:
        labels = torch.as_tensor(n_or_labels, dtype=torch.int64).flatten()
        n = labels.numel()
    k = int(np.floor(f * n + 0.5))
    if k < 1 or k >= n:
        raise ValueError(
            f"a dataset of {n} images cannot be split with holdout_fraction={fraction} "
            f"(the held-out set would hold {k}); use split='all' or change holdout_fraction"
        )
    if labels is None:
        perm = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed]))).permutation(n)
        test = np.sort(perm[:k])
    else:
        test = _stratified(labels.numpy(), k, seed)
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    train = np.flatnonzero(~is_test)
    return torch.from_numpy(train.astype(np.int64)), torch.from_numpy(np.sort(test).astype(np.int64))


def _stratified(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    classes, counts = np.unique(labels, return_counts=True)
    # Each class may give at most count - 1 images, so it stays represented in training.
    cap = counts - 1
    if cap.sum() < k:
        raise ValueError(
            f"cannot hold out {k} images while keeping every class in training "
            f"(class sizes {counts.tolist()}); lower holdout_fraction or use split='all'"
        )
    quota = k * counts / counts.sum()
    take = np.minimum(np.floor(quota).astype(np.int64), cap)
    # Hand the remaining slots to the classes with the largest remainders (ties: lower class id).
    order = sorted(range(len(classes)), key=lambda c: (-(quota[c] - take[c]), c))
    left = k - int(take.sum())
    while left > 0:
        for c in order:
            if left == 0:
                break
            if take[c] < cap[c]:
                take[c] += 1
                left -= 1
    picked = []
    for c, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, int(cls)])))
        picked.append(rng.permutation(members)[: take[c]])
    return np.concatenate(picked)
