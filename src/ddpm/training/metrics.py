"""`metrics.csv` of a run and the preview grid `samples/step-N.png` written while training."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import atomic_write_bytes
from ..io.images import make_grid, save_png

__all__ = ["MetricsLog", "FIELDS", "write_preview"]

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


@torch.no_grad()
def write_preview(
    path: str | Path,
    unet: torch.nn.Module,
    conditioner: Any,
    *,
    schedule: Any,
    shape: tuple[int, int, int],
    num: int,
    sampler: str,
    steps: int,
    guidance_scale: float,
    prediction: str,
    seed: int,
    device: torch.device,
    autocast: Any,
    step: int,
) -> Path:
    """Sample a grid with the EMA model (class-conditional: one row per class) and save it as PNG.

    Noise comes from per-image generators seeded `seed + i`, so every grid of a run starts from the same
    noise and shows how the model improves. The global RNG is left untouched (it is checkpointed).
    """
    from .. import sample

    n, cond, uncond, nrow = conditioner.preview(num, device=device)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    noise = torch.stack([torch.randn(*shape, generator=g) for g in gens]).to(device)
    guided = uncond is not None and guidance_scale != 1.0
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), autocast:
        x0 = sample(
            unet,
            noise,
            schedule=schedule,
            sampler=sampler,
            steps=min(steps, schedule.num_timesteps),
            prediction=prediction,
            guidance_scale=guidance_scale if guided else 1.0,
            cond=cond,
            uncond=uncond if guided else None,
            clip_x0="static",
            generator=gens,
        )
    grid = make_grid(x0.float().clamp(-1, 1).cpu(), nrow=nrow)
    info = {"step": step, "sampler": sampler, "steps": steps, "guidance_scale": guidance_scale, "seed": seed}
    return save_png(path, grid, {"ddpm": json.dumps(info, sort_keys=True)})
