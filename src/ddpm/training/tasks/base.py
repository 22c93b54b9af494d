"""The task protocol: what a run trains, as opposed to how (the loop in `training/loop.py`).

The loop calls a task in this order: `prepare()` (settings checked, the config completed), the config
check against a resumed run's (`fixed_on_resume`), `build()` (data and seeded module), then
`check_checkpoint` on resume; every optimizer step `draws` once and `loss` per micro-batch; on their
cadences `meta`, `to_file` / `from_file`, `preview` and `metrics`. `export` ships a run's model file.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...config import Config
from ...io.model_file import save_model_file
from ...io.model_meta import ModelMeta

__all__ = ["Task", "file_meta"]

Autocast = Callable[[], AbstractContextManager[Any]]


class Task(ABC):
    """One kind of training run, built from the run's config; the loop owns everything else."""

    name = ""
    # Config keys (or prefixes) whose change on resume would make the checkpoint meaningless.
    fixed_on_resume: tuple[str, ...] = ("data.dataset", "data.image_size", "data.channels", "train.seed")
    # Columns of metrics.csv after the loop's own, filled by `metrics`.
    metric_fields: tuple[str, ...] = ()

    def __init__(self, config: Config):
        self.config = config

    def prepare(self) -> None:  # noqa: B027  (an optional hook)
        """Check the task's settings and fill in the config fields the data implies (before the resume
        check compares the config with the run's)."""

    @abstractmethod
    def build(self) -> tuple[Any, nn.Module]:
        """(training dataset, the module to train), the module's weights drawn after seeding train.seed."""

    @abstractmethod
    def draws(self, generator: torch.Generator, *, parts: int) -> dict[str, Tensor | None]:
        """Every random decision of one optimizer step for the whole global batch, from `generator` (which
        is checkpointed); `parts` is the number of micro-batch chunks the batch is split into."""

    @abstractmethod
    def loss(
        self, forward: Callable[..., Any], batch: dict[str, Any], draws: dict[str, Any], *, rows: slice,
        part: int, autocast: Autocast,
    ) -> Tensor:
        """The scalar loss of one micro-batch: rows `rows` of the global batch, chunk `part` of it;
        `forward` is the (DDP-wrapped, maybe compiled) module."""

    @abstractmethod
    def meta(self, *, step: int) -> ModelMeta:
        """The "ddpm" metadata of the run's model files at `step`."""

    @abstractmethod
    def preview(
        self, module: nn.Module, path: Path, *, step: int, device: torch.device, autocast: Autocast
    ) -> Path:
        """Write the preview image `path` from `module` (the EMA copy), leaving the global RNG untouched."""

    def to_file(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training-module keys -> the model-file layout written into checkpoints."""
        return dict(state)

    def from_file(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """The model-file layout of a checkpoint -> training-module keys (the inverse of `to_file`)."""
        return dict(tensors)

    def check_checkpoint(self, meta: dict[str, Any], *, run_dir: Path) -> None:  # noqa: B027
        """Refuse to resume from a checkpoint with metadata `meta` that this run cannot continue."""

    def metrics(self, module: nn.Module) -> dict[str, float]:
        """The task's columns (`metric_fields`) of a metrics.csv row, measured on the EMA `module`."""
        return {}

    @classmethod
    def export(cls, tensors: dict[str, Tensor], meta: dict[str, Any], out: Path) -> Path:
        """Write the EMA weights of a run's checkpoint as the model file `out`."""
        return save_model_file(out, tensors, meta)


def file_meta(
    model: dict[str, Any], sections: dict[str, Any], *, fields: dict[str, tuple[str, ...]]
) -> ModelMeta:
    """A `ModelMeta` of `model` ({"unet": ...} or {"autoencoder": ...}) and whole `sections`, except that
    the sections named in `fields` write only those fields (the layout files of a task always had)."""
    meta = ModelMeta(**model).with_sections(**sections)
    return dataclasses.replace(meta, given={**meta.given, **fields})
