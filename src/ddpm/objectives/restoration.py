"""The cold-diffusion training loss (Bansal et al. 2022, Eq. 2): min_R E || R(D(x0, t), t) - x0 ||, with the
L1 norm of the paper or the squared L2 norm, averaged over every pixel; computed in float32."""

from __future__ import annotations

from torch import Tensor

from ..config.choices import RECONSTRUCTIONS
from ._checks import check_same_shape, mean_flat

__all__ = ["restoration_loss"]


def restoration_loss(output: Tensor, x0: Tensor, *, kind: str = "l1") -> Tensor:
    """The per-sample loss `[B]` of the restoration `output` = R(x_t, t) against the clean x0 `[B, C, …]`."""
    if kind not in RECONSTRUCTIONS:
        raise ValueError(f"unknown restoration loss {kind!r}; choose one of {list(RECONSTRUCTIONS)}")
    check_same_shape(output=output, x0=x0)
    err = output.float() - x0.float()
    return mean_flat(err.abs() if kind == "l1" else err.square())
