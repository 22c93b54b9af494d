"""ddpm.training: one readable training loop with EMA, atomic full-state checkpoints, exact resume and DDP.

`train(config, *, resume=None, progress=True) -> Path` is the entry point (`ddpm train`); `export_model`
writes a run's EMA weights as one model file (`ddpm export`).
"""

from .ema import EMA, ema_decay_at
from .export import export_model, model_meta
from .loop import DiffusionModule, Trainer, TrainingDiverged, lr_at, resolve_unet_config, train

__all__ = [
    "train",
    "Trainer",
    "TrainingDiverged",
    "DiffusionModule",
    "resolve_unet_config",
    "lr_at",
    "EMA",
    "ema_decay_at",
    "export_model",
    "model_meta",
]
