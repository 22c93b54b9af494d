"""Checkpoints of a run folder, written so that a crash at any instant leaves the last one loadable.

Layout (ARCHITECTURE.md, "Files"):

    runs/NAME/checkpoints/step-N/model.safetensors   training weights (a model file: "ddpm" metadata)
                                 ema.safetensors     EMA weights (the same layout; what export ships)
                                 state.pt            optimizer, RNG states, counters (torch.load weights_only)
    runs/NAME/latest                                 "checkpoints/step-N": the newest COMPLETE checkpoint

A checkpoint is written into a hidden temporary folder, every file fsync'ed, then renamed to `step-N` in
one `rename`; only after that is `latest` replaced (write beside + fsync + `os.replace`). A writer killed
at any point therefore leaves either the previous `latest` or the new one, each naming a complete folder.
Left-over temporary folders are removed by the next save.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import atomic_write, atomic_write_bytes, fsync_dir
from .checkpoint import load_pickle
from .model_file import load_model_file, save_model_file

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "run_model_file",
    "CHECKPOINTS",
    "LATEST",
    "TEST_BLOCK_ENV",
]

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_STEP = re.compile(r"^step-(\d+)$")
_TEMP_PREFIXES = (".tmp-step-", ".old-step-")

# Test hook: "STAGE:STEP:MARKER" makes the writer of checkpoint STEP create MARKER and block at STAGE
# ("files": after model.safetensors is written into the temporary folder; "renamed": after the rename,
# before `latest` is replaced), so a test can kill it there with SIGKILL.
TEST_BLOCK_ENV = "DDPM_TEST_BLOCK_CHECKPOINT"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, step, weights (model-file layout), EMA weights, state and metadata."""

    path: Path
    step: int
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]


def _maybe_block(stage: str, step: int) -> None:
    spec = os.environ.get(TEST_BLOCK_ENV)
    if not spec:
        return
    want_stage, want_step, marker = spec.split(":", 2)
    if want_stage == stage and int(want_step) == step:
        Path(marker).write_text(str(os.getpid()))
        while True:  # wait to be killed
            time.sleep(0.05)


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete-looking `step-N` folders of a run, oldest first, as (step, path)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _remove_leftovers(root: Path) -> None:
    for p in root.iterdir():
        if p.name.startswith(_TEMP_PREFIXES):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: dict[str, Tensor],
    ema: dict[str, Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    """Atomically write checkpoint `step` (see module docstring), point `latest` at it, keep the last
    `keep_last` checkpoints. Returns the `step-N` folder."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)

    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    tmp.mkdir()
    save_model_file(tmp / "model.safetensors", model, meta)
    _maybe_block("files", step)
    save_model_file(tmp / "ema.safetensors", ema, meta)
    with atomic_write(tmp / "state.pt") as part:
        torch.save(state, part)

    final = root / f"step-{step}"
    if final.exists():  # saving the same step again (e.g. a stop signal right after a periodic save)
        old = root / f".old-step-{step}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(root)
    _maybe_block("renamed", step)
    atomic_write_bytes(run_dir / LATEST, f"{CHECKPOINTS}/{final.name}\n".encode())

    for old_step, path in list_checkpoints(run_dir)[:-keep_last]:
        if path != final:
            trash = root / f".old-step-{old_step}-{os.getpid()}"
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The `step-N` folder `latest` names (a run folder), or `run_dir` itself if it is a checkpoint folder."""
    run_dir = Path(run_dir)
    if (run_dir / "state.pt").is_file() and (run_dir / "ema.safetensors").is_file():
        return run_dir
    pointer = run_dir / LATEST
    if not pointer.is_file():
        if not run_dir.exists():
            raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
        raise FileNotFoundError(
            f"{str(run_dir)!r} holds no complete checkpoint (no {LATEST!r} file); "
            "train at least to the first checkpoint, or pass a checkpoints/step-N folder"
        )
    target = pointer.read_text(encoding="utf-8").strip()
    path = Path(target) if os.path.isabs(target) else run_dir / target
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} names {target!r}, which is not a complete checkpoint")
    return path


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a run folder's latest checkpoint (or a `step-N` folder given directly)."""
    folder = latest_checkpoint(path)
    model, meta = load_model_file(folder / "model.safetensors", device=device)
    ema, _ = load_model_file(folder / "ema.safetensors", device=device)
    state = load_pickle(folder / "state.pt", fix="resume from an earlier checkpoint: write its folder "
                        f"(e.g. {CHECKPOINTS}/step-N) into the run's {LATEST!r} file")
    step = int(state["step"])
    return Checkpoint(path=folder, step=step, model=model, ema=ema, state=state, meta=meta)


def run_model_file(run: str | Path) -> Path:
    """The EMA model file of a run folder's latest checkpoint (or of a `step-N` folder)."""
    return latest_checkpoint(run) / "ema.safetensors"
