"""Map-style image datasets: the common base, an in-memory tensor dataset and subset views.

Every dataset here serves items `{"image": FloatTensor [C, H, W] in [-1, 1], "label": int
(when it has classes), "caption": str (when it has captions)}` and carries `num_classes`,
`class_names`, `channels`, `image_size` and `has_captions`.

The optional horizontal flip is a pure function of `(seed, epoch, index)`: `flip_mask` draws one
Bernoulli(1/2) per index from a numpy PCG64 stream seeded by `SeedSequence([seed, epoch])`, so
resuming a run at epoch e (after `set_epoch(e)`) replays exactly the same flips, in every
DataLoader worker and on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "TensorImageDataset", "SubsetDataset", "flip_mask"]


def flip_mask(n: int, *, seed: int, epoch: int) -> Tensor:
    """Bool `[n]`: which indices of a dataset of size n are mirrored in `epoch` under `seed`."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative integers, got seed={seed}, epoch={epoch}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch)])))
    return torch.from_numpy(rng.random(n) < 0.5)


class ImageDataset(Dataset):
    """Base of the image datasets: item dicts, deterministic flips, batch and whole-tensor access.

    Subclasses set the metadata attributes in `__init__` and implement `__len__` and `_image(i)`
    (the unflipped image `[C, H, W]` in [-1, 1]); `_images(idx)` may be overridden for speed.
    """

    channels: int
    image_size: int
    labels: Tensor | None  # [N] int64
    class_names: list[str] | None
    captions: list[str] | None
    paths: list[str] | None
    flip: bool
    seed: int
    epoch: int
    in_memory: bool = False  # whether `as_tensor` / `get_batch` are plain tensor indexing (no decoding)

    def _init_meta(
        self,
        *,
        channels: int,
        image_size: int,
        labels: Tensor | None,
        class_names: Sequence[str] | None,
        captions: Sequence[str] | None,
        paths: Sequence[str] | None = None,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        n = len(self)
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
            if labels.numel() != n:
                raise ValueError(f"got {labels.numel()} labels for {n} images")
            if class_names is None:
                top = int(labels.max()) + 1 if n else 0
                class_names = [str(k) for k in range(top)]
            if n and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
                raise ValueError(f"labels must lie in [0, {len(class_names)}) to match class_names")
        elif class_names is not None:
            raise ValueError("class_names given without labels")
        if captions is not None and len(captions) != n:
            raise ValueError(f"got {len(captions)} captions for {n} images")
        if paths is not None and len(paths) != n:
            raise ValueError(f"got {len(paths)} paths for {n} images")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.labels = labels
        self.class_names = list(class_names) if class_names is not None else None
        self.captions = list(captions) if captions is not None else None
        self.paths = list(paths) if paths is not None else None
        self.flip = bool(flip)
        self.seed = int(seed)
        self.epoch = 0
        self._mask: tuple[int, Tensor] | None = None

    # -- metadata ---------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or None for an unlabelled dataset."""
        return len(self.class_names) if self.class_names is not None else None

    @property
    def has_captions(self) -> bool:
        """Whether items carry a `"caption"`."""
        return self.captions is not None

    def __len__(self) -> int:
        raise NotImplementedError

    def _image(self, i: int) -> Tensor:
        raise NotImplementedError

    def _images(self, idx: Tensor) -> Tensor:
        """Unflipped images `[B, C, H, W]` for int64 indices `idx [B]` (already in range)."""
        if idx.numel() == 0:
            return torch.empty(0, self.channels, self.image_size, self.image_size)
        return torch.stack([self._image(int(i)) for i in idx])

    # -- flips ------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose flips `__getitem__` and `get_batch` apply (call it before each epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
        self.epoch = int(epoch)

    def flips(self, epoch: int | None = None) -> Tensor:
        """Bool `[N]`: the flip decision of every index for `epoch` (default: the current one)."""
        e = self.epoch if epoch is None else int(epoch)
        if not self.flip:
            return torch.zeros(len(self), dtype=torch.bool)
        if self._mask is None or self._mask[0] != e:
            self._mask = (e, flip_mask(len(self), seed=self.seed, epoch=e))
        return self._mask[1]

    # -- access -----------------------------------------------------------------------------------

    def _index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return i

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._index(i)
        image = self._image(i)
        if self.flip and bool(self.flips()[i]):
            image = image.flip(-1)
        item: dict[str, Any] = {"image": image}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        if self.captions is not None:
            item["caption"] = self.captions[i]
        return item

    def get_batch(self, indices: Sequence[int] | Tensor) -> dict[str, Any]:
        """The items at `indices`, collated: `image [B, C, H, W]`, `label [B]` int64, `caption list[str]`.

        Same values (flips included) as stacking `self[i]`, without a DataLoader.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).flatten()
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"indices must lie in [-{n}, {n}) for a dataset of {n} images")
        idx = torch.where(idx < 0, idx + n, idx)
        images = self._images(idx)
        if self.flip and idx.numel():
            m = self.flips()[idx]
            images = torch.where(m[:, None, None, None], images.flip(-1), images)
        batch: dict[str, Any] = {"image": images}
        if self.labels is not None:
            batch["label"] = self.labels[idx]
        if self.captions is not None:
            batch["caption"] = [self.captions[int(i)] for i in idx]
        return batch

    def captions_at(self, indices: Sequence[int], step: int) -> list[str]:
        """The captions of items `indices` as training step `step` sees them: the fixed `captions` here; a
        dataset may vary them with the step (a caption curriculum, rephrasings), as a pure function of
        (indices, step) so a resumed run sees the same ones. The trainer asks in-memory datasets; through
        a DataLoader items carry `captions`."""
        if self.captions is None:
            raise ValueError(f"{type(self).__name__} has no captions")
        return [self.captions[int(i)] for i in indices]

    def as_tensor(self) -> tuple[Tensor, Tensor | None]:
        """All images `[N, C, H, W]` in [-1, 1] (unflipped) and labels `[N]` int64 (None if unlabelled).

        The fast path for training from tensor batches; `get_batch` adds the dataset's flips.
        """
        return self._images(torch.arange(len(self))), self.labels

    def subset(self, indices: Sequence[int] | Tensor, *, flip: bool = False, seed: int = 0) -> SubsetDataset:
        """A view of the items at `indices` (in that order) with its own flip setting."""
        return SubsetDataset(self, indices, flip=flip, seed=seed)

    def __repr__(self) -> str:
        extra = f", classes={self.num_classes}" if self.num_classes is not None else ""
        extra += ", captions" if self.has_captions else ""
        extra += f", flip(seed={self.seed})" if self.flip else ""
        return (
            f"{type(self).__name__}(n={len(self)}, channels={self.channels}, "
            f"image_size={self.image_size}{extra})"
        )


class TensorImageDataset(ImageDataset):
    """A dataset held as one tensor `images [N, C, H, W]` in [-1, 1] (square, C in {1, 3})."""

    in_memory = True

    def __init__(
        self,
        images: Tensor,
        *,
        labels: Tensor | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        captions: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError("images must be a tensor [N, C, H, W]")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
        n, c, h, w = images.shape
        if c not in (1, 3):
            raise ValueError(f"images must have 1 (grey) or 3 (RGB) channels, got {c}")
        if h != w:
            raise ValueError(f"images must be square, got {h}x{w}; centre-crop them (transforms.fit_square)")
        if n and not bool(torch.isfinite(images).all()):
            raise ValueError("images hold NaN or infinite values")
        if n and (float(images.min()) < -1.0 or float(images.max()) > 1.0):
            raise ValueError(
                f"images must lie in [-1, 1], got [{float(images.min()):.4g}, {float(images.max()):.4g}]; "
                "map [0, 1] data with transforms.to_signed"
            )
        self.images = images.detach().float().contiguous()
        labels_t = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        self._init_meta(
            channels=c,
            image_size=h,
            labels=labels_t,
            class_names=class_names,
            captions=captions,
            paths=paths,
            flip=flip,
            seed=seed,
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def _image(self, i: int) -> Tensor:
        return self.images[i]

    def _images(self, idx: Tensor) -> Tensor:
        return self.images[idx]


class SubsetDataset(ImageDataset):
    """The items of `base` at `indices`, in that order; flips are decided by this view's own index."""

    def __init__(
        self, base: ImageDataset, indices: Sequence[int] | Tensor, *, flip: bool = False, seed: int = 0
    ) -> None:
        idx = torch.as_tensor(indices, dtype=torch.int64).flatten()
        n = len(base)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"subset indices must lie in [0, {n})")
        self.base = base
        self.indices = idx
        il = idx.tolist()
        self._init_meta(
            channels=base.channels,
            image_size=base.image_size,
            labels=None if base.labels is None else base.labels[idx],
            class_names=base.class_names,
            captions=None if base.captions is None else [base.captions[i] for i in il],
            paths=None if base.paths is None else [base.paths[i] for i in il],
            flip=flip,
            seed=seed,
        )

    def __len__(self) -> int:
        return self.indices.numel()

    def _image(self, i: int) -> Tensor:
        return self.base._image(int(self.indices[i]))

    def _images(self, idx: Tensor) -> Tensor:
        return self.base._images(self.indices[idx])

    # Facts about the whole source that a view shares (a folder's root and its report of skipped files).
    _SHARED = ("root", "skipped", "missing_captions")

    @property
    def in_memory(self) -> bool:  # type: ignore[override]
        return self.base.in_memory

    def __getattr__(self, name: str) -> Any:
        base = self.__dict__.get("base")
        if name in SubsetDataset._SHARED and base is not None:
            return getattr(base, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
