"""ddpm.training: one training loop for every task, with EMA, atomic full-state checkpoints, exact resume
and DDP; what a run trains is a task object (`tasks/`) picked by run.task.

`train(config, *, resume=None, progress=True, stop_after=None) -> Path` is the entry point (`ddpm train`;
SIGTERM and Ctrl-C save a checkpoint, then raise `TrainingInterrupted`);
`export_model` writes a run's EMA weights as one model file (`ddpm export`). A new task subclasses `Task`
and is registered with `register_task` (ARCHITECTURE.md).
"""

from .ema import EMA, ema_decay_at
from .export import export_model
from .loop import Trainer, TrainingDiverged, lr_at, train
from .signals import TrainingInterrupted
from .tasks import (
    AutoencoderTask,
    ColdDiffusionTask,
    DiffusionModule,
    DiffusionTask,
    SuperResolutionTask,
    Task,
    make_task,
    register_task,
    resolve_unet_config,
)

__all__ = [
    "train",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "Task",
    "DiffusionTask",
    "ColdDiffusionTask",
    "SuperResolutionTask",
    "AutoencoderTask",
    "make_task",
    "register_task",
    "DiffusionModule",
    "resolve_unet_config",
    "lr_at",
    "EMA",
    "ema_decay_at",
    "export_model",
]
