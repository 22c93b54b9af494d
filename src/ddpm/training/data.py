"""The training data stream: a deterministic order that a resumed run continues exactly.

The order is the concatenation of per-epoch permutations, epoch e being `randperm(N)` seeded by
(seed, e). A single integer, `position` (samples consumed), says where a run is; an optimizer step takes
the next `batch_size` indices (a batch may span two epochs). Each DDP rank and gradient-accumulation
micro-batch takes a fixed contiguous chunk of that global batch, so the maths does not depend on how
the batch is split.

In-memory datasets (a `TensorImageDataset` or a view of one) are gathered by index from one tensor;
anything else goes through a `DataLoader` fed with the same indices.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

__all__ = ["IndexStream", "BatchSource", "chunk"]


def _epoch_seed(seed: int, epoch: int) -> int:
    state = np.random.SeedSequence([int(seed), int(epoch), 0x0D0E]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


class IndexStream:
    """Dataset indices in training order; `take(position, count)` is a pure function of its arguments."""

    def __init__(self, n: int, *, seed: int):
        if n < 1:
            raise ValueError("the training dataset is empty")
        self.n = int(n)
        self.seed = int(seed)
        self._cache: tuple[int, Tensor] | None = None

    def permutation(self, epoch: int) -> Tensor:
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._cache = (epoch, torch.randperm(self.n, generator=g))
        return self._cache[1]

    def take(self, position: int, count: int) -> Tensor:
        """The `count` indices `[count]` (int64) starting at sample `position` of the stream."""
        parts = []
        while count > 0:
            epoch, offset = divmod(position, self.n)
            part = self.permutation(epoch)[offset : offset + count]
            parts.append(part)
            position += part.numel()
            count -= part.numel()
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def chunk(global_batch: int, index: int, parts: int) -> slice:
    """The slice of chunk `index` of `parts` equal chunks of a global batch."""
    size = global_batch // parts
    return slice(index * size, (index + 1) * size)


def _in_memory(dataset: Any) -> bool:
    from ..data import TensorImageDataset

    return isinstance(getattr(dataset, "base", dataset), TensorImageDataset)


class _RankBatches:
    """Index lists for this rank's micro-batches, step after step, starting at `position`."""

    def __init__(
        self, stream: IndexStream, position: int, global_batch: int, first: int, count: int, parts: int
    ):
        self.stream, self.position, self.global_batch = stream, position, global_batch
        self.first, self.count, self.parts = first, count, parts

    def __iter__(self) -> Iterator[list[int]]:
        position = self.position
        while True:
            idx = self.stream.take(position, self.global_batch)
            position += self.global_batch
            for c in range(self.first, self.first + self.count):
                yield idx[chunk(self.global_batch, c, self.parts)].tolist()


class BatchSource:
    """Collated micro-batches `{"image": [b, C, H, W], "label": [b], "caption": list[str]}` for one rank.

    `batches(idx)` returns the micro-batches of one optimizer step given its global indices `idx [G]`;
    with a DataLoader the indices are replayed from the stream, so both paths see the same samples.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        stream: IndexStream,
        position: int,
        global_batch: int,
        rank: int,
        world_size: int,
        grad_accum: int,
        device: torch.device,
        num_workers: int = 0,
        seed: int = 0,
    ):
        self.parts = world_size * grad_accum
        self.first = rank * grad_accum
        self.grad_accum = grad_accum
        self.global_batch = global_batch
        self.device = device
        self.loader_iter: Iterator[dict[str, Any]] | None = None
        if _in_memory(dataset):
            images, labels = dataset.as_tensor()
            self.images = images.to(device)
            self.labels = labels.to(device) if labels is not None else None
            self.captioned = dataset if getattr(dataset, "captions", None) is not None else None
        else:
            sampler = _RankBatches(stream, position, global_batch, self.first, grad_accum, self.parts)
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=num_workers > 0,
                # The loader's own seed comes from this generator, not the global RNG, which is checkpointed.
                generator=torch.Generator().manual_seed(int(seed)),
            )
            self.loader_iter = iter(loader)

    def batches(self, idx: Tensor, step: int) -> list[dict[str, Any]]:
        """`step` is the optimizer step the batch is for: in-memory datasets may caption by step."""
        out = []
        for c in range(self.first, self.first + self.grad_accum):
            if self.loader_iter is None:
                sub = idx[chunk(self.global_batch, c, self.parts)]
                sub_dev = sub.to(self.device, non_blocking=True)
                batch: dict[str, Any] = {"image": self.images[sub_dev]}
                if self.labels is not None:
                    batch["label"] = self.labels[sub_dev]
                if self.captioned is not None:
                    batch["caption"] = self.captioned.captions_at(sub.tolist(), step)
            else:
                batch = next(self.loader_iter)
                batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v
                         for k, v in batch.items()}
            out.append(batch)
        return out
