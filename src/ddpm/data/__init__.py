"""ddpm.data: image datasets for training and evaluation.

`load_dataset(name_or_path, split=..., image_size=..., flip=..., seed=...)` returns a map-style
dataset of `{"image": [C, H, W] in [-1, 1], "label": int, "caption": str}` items: a built-in real
dataset shipped by an installed package ("digits", "faces"; see `builtin.py`; "photos", `photos.py`), a
registered generated one ("shapes"), or an image folder (`folder.py`: class sub-folders, caption sidecars,
every PIL mode, bad files skipped and reported once).
"""

from __future__ import annotations

from . import builtin as _builtin  # noqa: F401  (registers "digits" and "faces")
from . import transforms
from .dataset import ImageDataset, SubsetDataset, TensorImageDataset, flip_mask
from .decode import IMAGE_EXTENSIONS, BadImageError, read_image
from .folder import BadImageWarning, ImageFolder
from .registry import builtin_names, load_dataset, register_builtin, split_factory, split_view
from .splits import holdout_split

__all__ = [
    "load_dataset",
    "register_builtin",
    "builtin_names",
    "split_factory",
    "split_view",
    "ImageDataset",
    "TensorImageDataset",
    "SubsetDataset",
    "ImageFolder",
    "BadImageWarning",
    "BadImageError",
    "IMAGE_EXTENSIONS",
    "read_image",
    "flip_mask",
    "holdout_split",
    "transforms",
]
