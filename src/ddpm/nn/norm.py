"""Normalisation helpers: GroupNorm (Wu & He 2018) computed in float32, and zero initialisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GroupNorm32", "zero_module"]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (Wu & He 2018) on `[B, C, ...]`, statistics taken in float32 for half-precision inputs."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            w = None if self.weight is None else self.weight.float()
            b = None if self.bias is None else self.bias.float()
            return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` (the residual branch then starts as the identity; ADM, Dhariwal &
    Nichol 2021) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
