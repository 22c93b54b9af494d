"""Built-in real datasets that ship inside installed packages (nothing is downloaded).

- `digits`: scikit-learn's optical-recognition handwritten digits (UCI; Alpaydin & Kaynak 1998):
  1,797 images of 8x8 with values 0..16, 10 classes "0".."9". Values are divided by 16 (ink is
  bright on a dark background, as in MNIST) and served at 16x16 by an antialiased bilinear resize.
- `faces`: scikit-image's `lfw_subset` (Huang et al. 2012, from Labeled Faces in the Wild): 200 grey
  25x25 crops, of which the first 100 are faces and the last 100 are *non-faces* cut from the
  backgrounds of the same photos. The dataset keeps both, labelled "face" (0) and "non_face" (1),
  served at 32x32; for a faces-only model train class-conditionally or filter on label 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .dataset import TensorImageDataset
from .registry import register_builtin, split_factory
from .transforms import match_channels, resize, to_signed

__all__ = ["digits", "faces", "DIGITS_SIZE", "FACES_SIZE"]

DIGITS_SIZE = 16
FACES_SIZE = 32


def _serve(unit: np.ndarray, *, image_size: int, channels: int) -> torch.Tensor:
    """Grey images `[N, h, w]` in [0, 1] -> `[N, channels, image_size, image_size]` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32)).unsqueeze(1)
    x = resize(x, (image_size, image_size))
    return to_signed(match_channels(x, channels)).contiguous()


def _check(image_size: int | None, channels: int | None, default_size: int) -> tuple[int, int]:
    size = default_size if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    ch = 1 if channels is None else int(channels)
    if ch not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (grey replicated to RGB), got {channels}")
    return size, ch


def digits(*, image_size: int | None = None, channels: int | None = None) -> TensorImageDataset:
    """scikit-learn `load_digits`: 1,797 handwritten digits, 10 classes, served `[1, 16, 16]` by default."""
    from sklearn.datasets import load_digits

    size, ch = _check(image_size, channels, DIGITS_SIZE)
    bunch = load_digits()
    images = _serve(bunch.images / 16.0, image_size=size, channels=ch)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return TensorImageDataset(images, labels=labels, class_names=[str(d) for d in range(10)])


def faces(*, image_size: int | None = None, channels: int | None = None) -> TensorImageDataset:
    """scikit-image `lfw_subset`: 100 faces + 100 non-faces (labels 0 / 1), `[1, 32, 32]` by default."""
    import skimage.data
    from skimage.data import lfw_subset

    size, ch = _check(image_size, channels, FACES_SIZE)
    # scikit-image ships this file in its wheel; without it, lfw_subset() would try to download it.
    shipped = Path(skimage.data.__file__).parent / "lfw_subset.npy"
    if not shipped.is_file():
        raise RuntimeError(
            f"this scikit-image install lacks {shipped.name} (expected at {shipped}); the faces dataset is "
            "never downloaded at run time: reinstall scikit-image from its wheel"
        )
    raw = np.asarray(lfw_subset())
    if raw.dtype == np.uint8:  # documented as uint8 by some scikit-image versions, float in [0, 1] by others
        raw = raw / 255.0
    if raw.shape[0] != 200 or raw.min() < 0.0 or raw.max() > 1.0:
        raise RuntimeError(f"unexpected lfw_subset from scikit-image: shape {raw.shape}, dtype {raw.dtype}")
    images = _serve(raw, image_size=size, channels=ch)
    labels = torch.cat([torch.zeros(100, dtype=torch.int64), torch.ones(100, dtype=torch.int64)])
    return TensorImageDataset(images, labels=labels, class_names=["face", "non_face"])


register_builtin("digits", split_factory(digits))
register_builtin("faces", split_factory(faces))
