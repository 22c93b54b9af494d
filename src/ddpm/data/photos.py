"""`photos`: square crops of the real photos scikit-image ships in its wheel (nothing is downloaded).

The split is fixed by photo, not drawn: "train" is the crops of `TRAIN_PHOTOS` followed by the 200
`lfw_subset` crops of `faces` (grey, replicated to RGB), "test" the crops of `HELD_OUT_PHOTOS` (coffee,
chelsea), "all" both. Every photo is first resized so its shorter side is 256 pixels, then cut into
non-overlapping `image_size` crops (32 by default) on a centred grid. Images are RGB, in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .dataset import TensorImageDataset
from .transforms import resize_shorter_side, to_signed

__all__ = ["TRAIN_PHOTOS", "HELD_OUT_PHOTOS", "PHOTO_SIZE", "load_photo", "photo_crops", "face_images",
           "photos_dataset"]

# Photo files in skimage/data. motorcycle_right is left out: it is the stereo twin of motorcycle_left, so
# holding it out would not test generalisation.
TRAIN_PHOTOS = ("astronaut.png", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png",
                "gravel.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png", "rocket.jpg",
                "retina.jpg")
HELD_OUT_PHOTOS = ("coffee.png", "chelsea.png")
PHOTO_SIZE = 32


def _skimage_file(name: str) -> Path:
    import skimage.data

    path = Path(skimage.data.__file__).parent / name
    if not path.is_file():
        raise FileNotFoundError(
            f"scikit-image's {name} is missing from this install ({path}); photos are never downloaded at "
            "run time: reinstall scikit-image from its wheel"
        )
    return path


def load_photo(name: str) -> Tensor:
    """A shipped photo as `[3, H, W]` in [0, 1] (grey replicated to RGB)."""
    from PIL import Image

    with Image.open(_skimage_file(name)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def photo_crops(names: Sequence[str], *, size: int = PHOTO_SIZE, shorter_side: int = 256) -> Tensor:
    """Non-overlapping `size x size` crops `[N, 3, size, size]` in [-1, 1] on a centred grid over each
    photo, first resized so its shorter side is `shorter_side` pixels (every photo seen at one scale)."""
    if size < 1 or shorter_side < size:
        raise ValueError(f"need 1 <= size <= shorter_side; got size={size}, shorter_side={shorter_side}")
    crops = []
    for name in names:
        img = resize_shorter_side(load_photo(name), shorter_side)
        h, w = img.shape[-2:]
        top, left = (h % size) // 2, (w % size) // 2
        grid = img[:, top:top + h // size * size, left:left + w // size * size]
        # [3, nh*size, nw*size] -> [nh*nw, 3, size, size]
        tiles = grid.unfold(1, size, size).unfold(2, size, size).permute(1, 2, 0, 3, 4)
        crops.append(tiles.reshape(-1, 3, size, size))
    return to_signed(torch.cat(crops)).clamp(-1.0, 1.0).contiguous()  # resizing may round just past 1


def face_images(*, size: int = PHOTO_SIZE) -> Tensor:
    """The 200 `lfw_subset` crops (faces and backgrounds) as RGB `[200, 3, size, size]` in [-1, 1]."""
    from .builtin import faces

    images, _ = faces(image_size=size, channels=3).as_tensor()
    return images


def photos_dataset(
    *,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    flip: bool = False,
    seed: int = 0,
    holdout_fraction: float | None = None,
) -> TensorImageDataset:
    """Registry factory for `load_dataset("photos", ...)`; the held-out photos are fixed, so
    `holdout_fraction` does not apply."""
    if channels not in (None, 3):
        raise ValueError(f"the photos are RGB; got channels={channels}, use 3")
    size = PHOTO_SIZE if image_size is None else int(image_size)
    parts = {
        "train": lambda: [photo_crops(TRAIN_PHOTOS, size=size), face_images(size=size)],
        "test": lambda: [photo_crops(HELD_OUT_PHOTOS, size=size)],
        "all": lambda: [photo_crops(TRAIN_PHOTOS + HELD_OUT_PHOTOS, size=size), face_images(size=size)],
    }
    if split not in parts:
        raise ValueError(f"split must be one of {', '.join(parts)}; got {split!r}")
    return TensorImageDataset(torch.cat(parts[split]()), flip=flip, seed=seed)
