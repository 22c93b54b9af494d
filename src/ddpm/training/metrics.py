"""`metrics.csv` of a run: the loop's columns (`FIELDS`), then the task's own."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_bytes

__all__ = ["MetricsLog", "FIELDS"]

FIELDS = ("step", "loss", "lr", "grad_norm", "nonfinite_skips", "it_s", "elapsed")


class MetricsLog:
    """Append-only CSV with a header; on resume, rows after the resumed step are dropped (they belong to
    progress the checkpoint does not hold, and will be logged again)."""

    def __init__(self, path: str | Path, *, resume_step: int | None = None, fields: tuple[str, ...] = FIELDS):
        self.path = Path(path)
        self.fields = tuple(fields)
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f)
                        if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_bytes(self.path, buf.getvalue().encode())
        elif not self.path.is_file() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(",".join(self.fields) + "\n", encoding="utf-8")

    def write(self, **row: Any) -> None:
        values = []
        for name in self.fields:
            v = row.get(name, "")
            if isinstance(v, float):
                v = "nan" if math.isnan(v) else f"{v:.6g}"
            values.append(str(v))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(",".join(values) + "\n")
