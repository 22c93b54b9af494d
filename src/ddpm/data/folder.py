"""`ImageFolder`: a folder of images (searched recursively) as an `ImageDataset`.

- Labels: with `labels="folders"` the first-level sub-folder of each image is its class (names
  sorted -> 0, 1, …; deeper folders belong to their first-level ancestor). `labels="auto"` does this
  when every image lies inside a first-level sub-folder and there are at least two of them, and
  otherwise serves unlabelled images; `labels="none"` never labels.
- Captions: `name.txt` (UTF-8) beside `name.png` is that image's caption. When any image has one,
  the dataset has captions and images without a sidecar get the empty caption "" (the
  "unconditional" prompt of classifier-free guidance); their number is in `missing_captions`.
- Indexing reads every file once: header and structure check (`verify`), then a full decode. Empty,
  corrupt, non-image and decompression-bomb files are skipped, listed in `skipped` (reason ->
  paths) and reported once in a single `BadImageWarning`. Hidden files and folders (names starting
  with ".") are ignored, as are files without an image extension.
- Every image is converted by `decode.to_unit`, resized (shorter side to `image_size`, antialiased
  bilinear) and centre-cropped to a square, then mapped to [-1, 1]. `image_size=None` uses the
  smallest shorter side in the folder. `channels=None` is 1 when every image is grey, else 3.
- Decoded images are kept in memory when they fit in `in_memory_limit` bytes (or `in_memory=True`);
  otherwise each item is decoded from its file when asked for.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .dataset import ImageDataset
from .decode import IMAGE_EXTENSIONS, BadImageError, read_image, verify_image
from .transforms import fit_square, match_channels, to_signed

__all__ = ["ImageFolder", "BadImageWarning", "LABEL_MODES"]

LABEL_MODES = ("auto", "folders", "none")
_FOLDER_OPTIONS = ("labels", "max_pixels", "in_memory", "in_memory_limit")
IN_MEMORY_LIMIT = 1 << 30  # bytes of float32 pixels kept in memory when in_memory=None


class BadImageWarning(UserWarning):
    """Some files of an image folder were skipped (see `ImageFolder.skipped`)."""


def _scan(root: Path) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Relative posix paths of image-extension files under `root` (sorted) and (size, mtime) of all files."""
    images: list[str] = []
    stats: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            try:
                st = full.stat()
            except OSError:
                st = None
            stats[rel] = (st.st_size, st.st_mtime_ns) if st else (-1, -1)
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(rel)
    images.sort()
    return images, stats


def _caller_level() -> int:
    """The `stacklevel` that points a warning at the first caller outside ddpm.data."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def _check_root(root: Path) -> Path:
    wanted = f"expected a folder of images ({', '.join(IMAGE_EXTENSIONS)})"
    if not root.exists():
        raise FileNotFoundError(f"no folder at {root}: {wanted}")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file: {wanted}")
    return root.resolve()


class ImageFolder(ImageDataset):
    """Images under `root` (recursive), with optional class sub-folders and caption sidecars."""

    _cache: weakref.WeakValueDictionary[tuple[Any, ...], ImageFolder] = weakref.WeakValueDictionary()

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        image_size: int | None = None,
        channels: int | None = None,
        labels: str = "auto",
        max_pixels: int | None = None,
        in_memory: bool | None = None,
        in_memory_limit: int = IN_MEMORY_LIMIT,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}; got {labels!r}")
        if channels is not None and channels not in (1, 3):
            raise ValueError(f"channels must be 1, 3 or None (decided by the images), got {channels!r}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
        self.root = _check_root(Path(os.path.expanduser(os.fspath(root))))
        self.max_pixels = max_pixels
        candidates, stats = _scan(self.root)
        if not candidates:
            raise ValueError(
                f"no images found under {self.root} (searched recursively for {', '.join(IMAGE_EXTENSIONS)}; "
                "hidden files and folders are ignored)"
            )
        self.skipped: dict[str, list[str]] = {}

        # Pass 1: headers and structure, which gives the sizes for image_size=None without decoding.
        sizes = {}
        for rel in candidates:
            try:
                sizes[rel] = verify_image(self.root / rel, max_pixels=max_pixels)
            except BadImageError as e:
                self._skip(e.reason, rel)
        ok = [rel for rel in candidates if rel in sizes]
        size = int(image_size) if image_size is not None else min((min(sizes[r]) for r in ok), default=1)
        captions = self._read_captions(ok, stats)
        ok = [rel for rel in ok if rel in captions or os.path.splitext(rel)[0] + ".txt" not in stats]

        # Pass 2: full decode of every file (a truncated file passes `verify` but fails here).
        keep = bool(in_memory) if in_memory is not None else len(ok) * 3 * size * size * 4 <= in_memory_limit
        decoded: list[Tensor] = []
        good: list[str] = []
        grey = True
        for rel in ok:
            try:
                x = fit_square(read_image(self.root / rel, max_pixels=max_pixels, min_side=size), size)
            except BadImageError as e:
                self._skip(e.reason, rel)
                continue
            good.append(rel)
            grey = grey and x.shape[0] == 1
            if keep:
                decoded.append(x if channels is None else match_channels(x, channels))
        if not good:
            raise ValueError(
                f"none of the {len(candidates)} image files under {self.root} could be read "
                f"({self._summary()}); check the files or point at another folder"
            )

        names, label_t = self._folder_labels(good, labels)
        self._files = good
        self.in_memory = keep
        c = channels if channels is not None else (1 if grey else 3)
        self._pixels = to_signed(torch.stack([match_channels(x, c) for x in decoded])) if keep else None
        has_captions = any(rel in captions for rel in good)
        self.missing_captions = sum(rel not in captions for rel in good) if has_captions else 0
        self._init_meta(
            channels=c,
            image_size=size,
            labels=label_t,
            class_names=names,
            captions=[captions.get(rel, "") for rel in good] if has_captions else None,
            paths=[str(self.root / rel) for rel in good],
            flip=flip,
            seed=seed,
        )
        self._report(len(candidates))

    def _skip(self, reason: str, rel: str) -> None:
        self.skipped.setdefault(reason, []).append(rel)

    def _read_captions(self, rels: list[str], stats: dict[str, tuple[int, int]]) -> dict[str, str]:
        """Caption of each image that has a `name.txt` sidecar; unreadable sidecars skip their image."""
        captions = {}
        for rel in rels:
            sidecar = os.path.splitext(rel)[0] + ".txt"
            if sidecar in stats:
                try:
                    captions[rel] = (self.root / sidecar).read_text(encoding="utf-8-sig").strip()
                except (OSError, UnicodeDecodeError):
                    self._skip("unreadable caption (not UTF-8 text)", rel)
        return captions

    def _folder_labels(self, rels: list[str], mode: str) -> tuple[list[str] | None, Tensor | None]:
        """Class names and labels `[N]` from first-level sub-folders, or (None, None)."""
        top = [rel.split("/", 1)[0] if "/" in rel else None for rel in rels]
        in_folders = all(t is not None for t in top)
        names = sorted({t for t in top if t is not None})
        if mode == "folders" and not in_folders:
            loose = [rel for rel, t in zip(rels, top) if t is None][:3]
            raise ValueError(
                f"labels='folders' needs every image inside a class sub-folder of {self.root}, "
                f"but some lie at its top level (e.g. {', '.join(loose)}); move them or use labels='none'"
            )
        if not (mode == "folders" or (mode == "auto" and in_folders and len(names) >= 2)):
            return None, None
        index = {name: k for k, name in enumerate(names)}
        return names, torch.tensor([index[t] for t in top], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self._files)

    def _image(self, i: int) -> Tensor:
        if self._pixels is not None:
            return self._pixels[i]
        path = self.root / self._files[i]
        try:
            x = read_image(path, max_pixels=self.max_pixels, min_side=self.image_size)
        except BadImageError as e:
            raise BadImageError(e.reason, f"{path} was readable when the folder was indexed: {e}") from e
        return to_signed(match_channels(fit_square(x, self.image_size), self.channels))

    def _images(self, idx: Tensor) -> Tensor:
        if self._pixels is not None:
            return self._pixels[idx]
        return super()._images(idx)

    # -- the one report ---------------------------------------------------------------------------

    def _summary(self) -> str:
        parts = []
        for reason, paths in sorted(self.skipped.items()):
            examples = ", ".join(paths[:3]) + (", …" if len(paths) > 3 else "")
            parts.append(f"{len(paths)} {reason} ({examples})")
        return "; ".join(parts)

    def _report(self, total: int) -> None:
        lines = []
        if self.skipped:
            n = sum(len(v) for v in self.skipped.values())
            lines.append(f"skipped {n} of {total} files under {self.root}: {self._summary()}")
        if self.missing_captions:
            lines.append(
                f"{self.missing_captions} of {len(self)} images under {self.root} have no caption sidecar "
                "(name.txt beside name.png); they get the empty caption"
            )
        if lines:
            warnings.warn("; ".join(lines), BadImageWarning, stacklevel=_caller_level())

    # -- shared instances -------------------------------------------------------------------------

    @classmethod
    def cached(cls, root: str | os.PathLike[str], **options: Any) -> ImageFolder:
        """An `ImageFolder`, reused while one for the same unchanged files and options is alive.

        Loading the train and the test split of a folder thus reads (and reports) it once.
        """
        path = _check_root(Path(os.path.expanduser(os.fspath(root))))
        unknown = sorted(set(options) - {"image_size", "channels", *_FOLDER_OPTIONS})
        if unknown:
            raise ValueError(
                f"an image folder takes no option {unknown[0]!r}; its options: {', '.join(_FOLDER_OPTIONS)}"
            )
        key = (str(path), tuple(sorted(options.items())), tuple(sorted(_scan(path)[1].items())))
        ds = cls._cache.get(key)
        if ds is None:
            ds = cls(path, **options)
            cls._cache[key] = ds
        return ds
