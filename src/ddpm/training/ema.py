"""Exponential moving average of the weights (Polyak averaging; DDPM App. B uses decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "ema_decay_at"]


def ema_decay_at(step: int, *, decay: float, warmup: bool) -> float:
    """The decay used after optimizer step `step` (0-based): `decay`, or min(decay, (1+step)/(10+step))
    with warmup, so that early averages are not dominated by the random initial weights."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class EMA:
    """theta_ema <- d * theta_ema + (1 - d) * theta after every optimizer step, in one foreach lerp.

    `module` is a frozen copy of the model (eval mode, no grads) that holds the averaged weights;
    buffers are copied from the model, not averaged.
    """

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._ema_params = [p for p in self.module.parameters() if p.is_floating_point()]
        self._ema_buffers = list(self.module.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average in `model`'s current weights after optimizer step `step`."""
        params = [p.detach() for p in model.parameters() if p.is_floating_point()]
        if len(params) != len(self._ema_params):
            raise ValueError("EMA.update got a model with other parameters than the one it was built from")
        weight = 1.0 - ema_decay_at(step, decay=self.decay, warmup=self.warmup)
        torch._foreach_lerp_(self._ema_params, params, weight)
        buffers = list(model.buffers())
        if buffers:
            torch._foreach_copy_(self._ema_buffers, [b.detach() for b in buffers])
