"""Input checks and small tensor helpers shared by the objectives; every failure is a ValueError that says
what to pass instead."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..process import PREDICTIONS
from ..schedules import DiscreteSchedule


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension, `[B, ...]` -> `[B]`."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def split_output(output: Tensor, x_t: Tensor, learned_variance: bool) -> tuple[Tensor, Tensor | None]:
    """(prediction `[B, C, ...]`, learned-range v `[B, C, ...]` or None) from a network output."""
    shape = tuple(x_t.shape)
    doubled = (shape[0], 2 * shape[1], *shape[2:]) if x_t.ndim >= 2 else None
    if learned_variance:
        if doubled is None or tuple(output.shape) != doubled:
            raise ValueError(
                f"learned_variance=True needs an output with twice the channels of x_t {shape}, i.e. "
                f"{doubled}, got {tuple(output.shape)}; give the network learned-variance outputs or pass "
                "learned_variance=False"
            )
        mean_out, var_out = output.chunk(2, dim=1)
        return mean_out, var_out
    if tuple(output.shape) != shape:
        hint = ""
        if tuple(output.shape) == doubled:
            hint = "; it has twice the channels: pass learned_variance=True"
        raise ValueError(f"output shape {tuple(output.shape)} must equal the shape of x_t {shape}{hint}")
    return output, None


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(PREDICTIONS)}")


def check_t(t: Tensor, schedule: DiscreteSchedule, x: Tensor) -> Tensor:
    """Timesteps `[B]` as int64, each in [0, T-1]."""
    if not isinstance(t, Tensor) or t.ndim != 1 or t.shape[0] != x.shape[0]:
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"t must be a tensor of timesteps [B] with B = {x.shape[0]}, got {got}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"t must hold integer timesteps (int64, e.g. from sample_timesteps), got {t.dtype}")
    t_cpu = t.detach().cpu()  # process.extract gathers on the CPU anyway
    if t_cpu.numel() and (t_cpu.min() < 0 or t_cpu.max() >= schedule.num_timesteps):
        raise ValueError(
            f"timesteps must lie in [0, {schedule.num_timesteps - 1}] for this schedule, "
            f"got values in [{int(t_cpu.min())}, {int(t_cpu.max())}]"
        )
    return t.long()


def check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(x.shape) for name, x in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"these tensors must have the same shape [B, C, H, W]: {shapes}")


def check_data(x0: Tensor) -> None:
    """x0 must be a non-empty batch of values in [-1, 1] (8-bit images scaled by 1/127.5 - 1)."""
    if x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch [B, C, H, W], got shape {tuple(x0.shape)}")
    lo, hi = x0.min().item(), x0.max().item()
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"x0 must be 8-bit data scaled to [-1, 1] (pixel / 127.5 - 1), got values in [{lo:g}, {hi:g}]"
        )


def check_cond(cond: Mapping[str, Any] | None, batch: int) -> dict[str, Any]:
    """The model's keyword arguments; tensors must be per-sample `[B, ...]`."""
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise ValueError(f"cond must be a dict of keyword arguments for the model, got {type(cond).__name__}")
    for name, value in cond.items():
        if isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != batch):
            raise ValueError(
                f"cond[{name!r}] must have the batch size of x0 ({batch}) in its first dimension, "
                f"got shape {tuple(value.shape)}"
            )
    return dict(cond)
