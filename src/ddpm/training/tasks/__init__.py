"""Training tasks: what a run trains, chosen by run.task. The loop (`training/loop.py`) is the same for all.

A new task subclasses `Task` (`base.py`), is registered with `register_task(name, cls)`, and its name is
added to `ddpm.config.choices.TASKS` so a config may choose it (ARCHITECTURE.md, "Where a new part goes").
"""

from __future__ import annotations

from typing import Any

from ...io.model_meta import ModelMeta
from .autoencoder import AutoencoderTask
from .base import Task
from .cold import ColdDiffusionTask
from .contrastive import ContrastiveTask
from .diffusion import DiffusionModule, DiffusionTask, resolve_unet_config
from .super_resolution import SuperResolutionModule, SuperResolutionTask
from .unclip import UnclipPriorTask

__all__ = ["Task", "DiffusionTask", "ColdDiffusionTask", "SuperResolutionTask", "SuperResolutionModule",
           "AutoencoderTask", "ContrastiveTask", "UnclipPriorTask", "DiffusionModule",
           "resolve_unet_config", "TASKS", "register_task", "make_task", "task_of_file"]

TASKS: dict[str, type[Task]] = {"diffusion": DiffusionTask, "autoencoder": AutoencoderTask,
                                "contrastive": ContrastiveTask, "unclip_prior": UnclipPriorTask}


def register_task(name: str, cls: type[Task], *, replace: bool = False) -> None:
    """Make run.task = `name` train with `cls(config)`."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"a training task must be a subclass of ddpm.training.Task, got {cls!r}")
    if name in TASKS and TASKS[name] is not cls and not replace:
        raise ValueError(f"a training task {name!r} is already registered; pass replace=True to override it")
    TASKS[name] = cls


def _task_class(name: str, what: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"{what} has no training task registered (known: {', '.join(sorted(TASKS))}); "
                         "a new task is added with ddpm.training.register_task")
    return TASKS[name]


def make_task(config: Any) -> Task:
    """The task object for `config.run.task` (a diffusion run with `[diffusion] degradation` set trains
    cold diffusion, `ColdDiffusionTask`; one with `[model] low_res` set trains super-resolution,
    `SuperResolutionTask`)."""
    cls = _task_class(config.run.task, f"run.task = {config.run.task!r}")
    if cls is DiffusionTask and config.model.low_res is not None:
        if config.diffusion.cold:
            raise ValueError("model.low_res (a super-resolution model) and diffusion.degradation (cold "
                             "diffusion) do not combine; remove one of them")
        cls = SuperResolutionTask
    if cls is DiffusionTask and config.diffusion.cold:
        cls = ColdDiffusionTask
    return cls(config)


def task_of_file(meta: dict[str, Any]) -> type[Task]:
    """The task class that wrote a model file with metadata `meta` (its training.task, else its kind)."""
    typed = ModelMeta.from_dict(meta)
    name = typed.training.task or typed.kind
    return _task_class(name, f"a model file of task {name!r}")
