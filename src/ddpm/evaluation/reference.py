"""Real reference sets for the Fréchet distance and its floor.

The floor is the distance between two *disjoint* sets of real images of the same size as the sample set:
what a perfect generator would score, since the estimate of d^2 from n samples is biased upwards by about
tr(C)/n on each side. When the samples carry class labels, both real sets are drawn with the samples' class
histogram (stratified), so neither the floor nor the samples' distance moves with the luck of the class mix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ReferenceDraw", "reference_draws"]


class ReferenceDraw(NamedTuple):
    """Indices into the samples (`sample_idx`) and two disjoint index sets into the real data (`a`, `b`)."""

    sample_idx: Tensor
    a: Tensor
    b: Tensor


def _class_counts(sample_labels: Tensor, num_classes: int) -> Tensor:
    return torch.bincount(sample_labels, minlength=num_classes)


def reference_draws(
    num_samples: int,
    real_labels: Tensor | None,
    *,
    sample_labels: Tensor | None = None,
    num_real: int | None = None,
    repeats: int = 1,
    seed: int = 0,
) -> list[ReferenceDraw]:
    """`repeats` seeded draws of two disjoint real sets matching the samples (size and, if labelled, classes).

    If the real data cannot supply two disjoint sets as large as the sample set, every class count is scaled
    down by the same factor and the same subset of samples (the first of each class) is used, so the three
    sets always have equal size and class mix. `num_real` is needed when `real_labels` is None.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    gen = torch.Generator().manual_seed(seed)
    if sample_labels is None or real_labels is None:
        n_real = len(real_labels) if real_labels is not None else num_real
        if n_real is None:
            raise ValueError("give num_real when the real data has no labels")
        m = min(num_samples, n_real // 2)
        if m < 2:
            raise ValueError(f"need at least 4 real images for a Fréchet floor, got {n_real}")
        sample_idx = torch.arange(m)
        draws = []
        for _ in range(repeats):
            perm = torch.randperm(n_real, generator=gen)
            draws.append(ReferenceDraw(sample_idx, perm[:m].sort().values, perm[m : 2 * m].sort().values))
        return draws

    sample_labels = torch.as_tensor(sample_labels, dtype=torch.int64).flatten()
    real_labels = torch.as_tensor(real_labels, dtype=torch.int64).flatten()
    if sample_labels.numel() != num_samples:
        raise ValueError(f"got {sample_labels.numel()} sample labels for {num_samples} samples")
    num_classes = int(max(int(sample_labels.max()), int(real_labels.max()))) + 1
    want = _class_counts(sample_labels, num_classes)
    have = _class_counts(real_labels, num_classes)
    missing = ((want > 0) & (have < 2)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"the real data has fewer than 2 images of classes {missing}; no floor can be drawn")
    # The largest factor r <= 1 with floor(r * want_c) <= have_c // 2 for every class.
    ratio = min(1.0, min(float(have[c] // 2) / float(want[c]) for c in range(num_classes) if want[c] > 0))
    take = (want.double() * ratio).floor().long()
    sample_idx = (
        torch.cat([(sample_labels == c).nonzero().flatten()[: int(take[c])] for c in range(num_classes)])
        .sort()
        .values
    )
    by_class = [(real_labels == c).nonzero().flatten() for c in range(num_classes)]
    draws = []
    for _ in range(repeats):
        a, b = [], []
        for c in range(num_classes):
            k = int(take[c])
            if k == 0:
                continue
            idx = by_class[c][torch.randperm(len(by_class[c]), generator=gen)]
            a.append(idx[:k])
            b.append(idx[k : 2 * k])
        draws.append(ReferenceDraw(sample_idx, torch.cat(a).sort().values, torch.cat(b).sort().values))
    return draws
