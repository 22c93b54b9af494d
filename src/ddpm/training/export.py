"""From a training run to one self-describing model file (`ddpm export`).

A checkpoint's `ema.safetensors` already is a model file: EMA weights in the layout of the task that
trained them, with the metadata written at training time. Exporting hands it to that task (named by the
metadata), which writes it out of the run folder atomically, adding what only the finished run can know
(an autoencoder's latent scaling factor).
"""

from __future__ import annotations

from pathlib import Path

from ..io.model_file import load_model_file
from ..io.run_folder import run_model_file
from .tasks import task_of_file

__all__ = ["export_model"]


def export_model(run: str | Path, out: str | Path) -> Path:
    """Write the EMA weights of `run`'s latest checkpoint (or of a `step-N` folder) as one model file `out`
    (.safetensors)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the exported model file must end in .safetensors, got {str(out)!r}")
    tensors, meta = load_model_file(run_model_file(run))
    return task_of_file(meta).export(tensors, meta, out)
