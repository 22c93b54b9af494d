"""This server's outputs, by opaque id only: `<id>.png` in the `--outputs` folder, with the PNG metadata
(A1111's "parameters" text and the `ddpm` JSON) that reproduces each.

A file route never takes a path: the id must be 32 lowercase hex digits of an image this server wrote, the
file must be a regular file (no symlink) directly inside the folder. `../`, `%2e%2e%2f`, `..\\`, absolute
and UNC paths and NUL bytes cannot match the pattern, and nothing is written outside the folder.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from torch import Tensor

from ..io.images import format_parameters, png_metadata, save_png

__all__ = ["Outputs", "OUTPUT_ID"]

OUTPUT_ID = re.compile(r"[0-9a-f]{32}")


class Outputs:
    """The outputs folder and the index of the images written into it by this server."""

    def __init__(self, folder: str | Path, *, keep: int = 1000) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder.resolve()
        self.keep = keep
        self._index: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def add(
        self, image: Tensor, meta: dict[str, Any], *, job: str = "", settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write `image` `[3, H, W]` in [-1, 1] as `<new id>.png` with `meta`; its record (with the request
        `settings`, in A1111's field names, that regenerate it)."""
        out_id = secrets.token_hex(16)
        save_png(self.folder / f"{out_id}.png", image, png_metadata(meta))
        record = {"id": out_id, "url": f"/api/outputs/{out_id}.png", "seed": meta.get("seed"),
                  "infotext": format_parameters(meta), "meta": meta, "job": job, "settings": settings or {},
                  "created": time.time()}  # fmt: skip
        with self._lock:
            self._index[out_id] = record
            while len(self._index) > self.keep:  # the index forgets the oldest; the files stay
                self._index.popitem(last=False)
        return record

    def records(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._index.values()))

    def path(self, out_id: str) -> Path | None:
        """The file of output `out_id`, or None for anything that is not one of ours."""
        if not isinstance(out_id, str) or not OUTPUT_ID.fullmatch(out_id):
            return None
        with self._lock:
            if out_id not in self._index:
                return None
        path = self.folder / f"{out_id}.png"
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or path.resolve().parent != self.folder:
            return None  # a symlink (or anything else) put in place of our file
        return path

    def png_bytes(self, out_id: str) -> bytes:
        path = self.path(out_id)
        if path is None:
            raise KeyError(out_id)
        return path.read_bytes()
