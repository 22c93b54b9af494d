"""`load_dataset`: one entry point for built-in datasets (by name) and image folders (by path).

A built-in is registered with `register_builtin(name, factory)`. `load_dataset(name, **kw)` calls
`factory(split=..., image_size=..., channels=..., flip=..., seed=..., holdout_fraction=..., **extra)`
with every keyword it was given, and returns what the factory returns: a map-style dataset of
`{"image", "label"?, "caption"?}` dicts. A dataset that exists as one whole set of images (rather
than generated per split) wraps its builder with `split_factory`, which adds the cached whole set,
the deterministic held-out split of `splits.py` and the flip for it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config.choices import LOAD_KEYWORDS
from .dataset import ImageDataset, SubsetDataset
from .splits import SPLITS, holdout_split

__all__ = [
    "load_dataset", "register_builtin", "builtin_names", "split_factory", "split_view", "LOAD_KEYWORDS",
]

_BUILTINS: dict[str, Callable[..., Any]] = {}
# Built-ins defined in modules of their own, imported on first use: name -> (module, factory attribute).
_BUILTIN_MODULES = {"shapes": ("ddpm.data.shapes", "shapes_dataset"),
                    "photos": ("ddpm.data.photos", "photos_dataset")}
# Keywords `load_dataset` passes to every factory itself (so not dataset options).


def register_builtin(name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
    """Make `load_dataset(name, **kw)` return `factory(**kw)` (see the module docstring)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a built-in dataset name must be a plain identifier, got {name!r}")
    if not callable(factory):
        raise TypeError(f"the factory for {name!r} must be callable")
    if name in _BUILTINS and _BUILTINS[name] is not factory and not replace:
        raise ValueError(f"built-in dataset {name!r} is already registered; pass replace=True to override it")
    _BUILTINS[name] = factory


def builtin_names() -> list[str]:
    """Names `load_dataset` accepts besides folder paths."""
    for name in _BUILTIN_MODULES:
        _builtin(name)
    return sorted(_BUILTINS)


def _builtin(name: str) -> Callable[..., Any] | None:
    if name not in _BUILTINS and name in _BUILTIN_MODULES:
        module_name, attr = _BUILTIN_MODULES[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            return None
        if name not in _BUILTINS and hasattr(module, attr):  # the module may register itself on import
            register_builtin(name, getattr(module, attr))
    return _BUILTINS.get(name)


def _check_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Refuse a keyword the built-in's factory does not take, naming the ones it does."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    own = [n for n in params if n not in LOAD_KEYWORDS]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"built-in dataset {name!r} takes no option {unknown[0]!r}; its options: "
                         f"{', '.join(own) if own else '(none)'}")


def _looks_like_path(s: str) -> bool:
    seps = (os.sep, "/") + ((os.altsep,) if os.altsep else ())
    return any(c in s for c in seps) or s.startswith((".", "~"))


def _check_common(split: str, image_size: int | None, channels: int | None, seed: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1, 3 or None (the dataset's own), got {channels!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def split_view(
    base: ImageDataset, split: str, *, flip: bool = False, seed: int = 0, holdout_fraction: float = 0.1
) -> SubsetDataset:
    """The `split` ("train" / "test" / "all") of a whole dataset, as a view with its own flip."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if split == "all":
        return SubsetDataset(base, range(len(base)), flip=flip, seed=seed)
    strata = base.labels if base.labels is not None else len(base)
    train, test = holdout_split(strata, fraction=holdout_fraction)
    return SubsetDataset(base, train if split == "train" else test, flip=flip, seed=seed)


def split_factory(
    build: Callable[..., ImageDataset], *, name: str | None = None
) -> Callable[..., SubsetDataset]:
    """A registry factory for a dataset held as one whole set: `build(image_size=, channels=)` -> dataset.

    The whole set is built once per (image_size, channels) and shared while any view of it lives.
    """
    label = name or getattr(build, "__name__", "dataset")
    wholes: weakref.WeakValueDictionary[tuple[Any, ...], ImageDataset] = weakref.WeakValueDictionary()

    def factory(
        *,
        split: str = "train",
        image_size: int | None = None,
        channels: int | None = None,
        flip: bool = False,
        seed: int = 0,
        holdout_fraction: float = 0.1,
        **extra: Any,
    ) -> SubsetDataset:
        if extra:
            raise ValueError(f"the built-in dataset {label!r} takes no options {sorted(extra)}")
        _check_common(split, image_size, channels, seed)
        key = (image_size, channels)
        base = wholes.get(key)
        if base is None:
            base = build(image_size=image_size, channels=channels)
            if not isinstance(base, ImageDataset):
                raise TypeError(f"{label!r} builder returned {type(base).__name__}, expected an ImageDataset")
            wholes[key] = base
        return split_view(base, split, flip=flip, seed=seed, holdout_fraction=holdout_fraction)

    factory.__name__ = f"{label}_factory"
    factory.__doc__ = f"Registry factory of {label!r}: whole set, fixed held-out split, seeded flips."
    return factory


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    flip: bool = False,
    seed: int = 0,
    holdout_fraction: float = 0.1,
    **options: Any,
) -> Any:
    """A built-in dataset by name ("digits", "faces", "shapes", …) or an image folder by path.

    split: "train" / "test" are a fixed, disjoint held-out split (stratified by class where there
    are classes; the same for every `seed`), "all" is everything. `flip` mirrors images left-right
    by a decision that is a function of (seed, epoch, index): call `dataset.set_epoch(e)` each epoch.
    `options` go to the built-in's factory, or for a folder to `ImageFolder` (`labels`, `max_pixels`,
    `in_memory`). A folder named like a built-in is reached with an explicit path such as "./digits".
    """
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
        factory = _builtin(name_or_path)
        if factory is not None:
            _check_options(name_or_path, factory, options)
            kw = dict(split=split, image_size=image_size, channels=channels, flip=flip, seed=seed)
            return factory(**kw, holdout_fraction=holdout_fraction, **options)

    _check_common(split, image_size, channels, seed)
    path = Path(os.path.expanduser(os.fspath(name_or_path)))
    if not path.exists():
        raise FileNotFoundError(
            f"{os.fspath(name_or_path)!r} is neither a built-in dataset ({', '.join(builtin_names())}) "
            "nor an existing folder of images"
        )
    from .folder import ImageFolder

    base = ImageFolder.cached(path, image_size=image_size, channels=channels, **options)
    return split_view(base, split, flip=flip, seed=seed, holdout_fraction=holdout_fraction)
