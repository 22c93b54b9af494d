"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper every sampler uses.

Notation:

| symbol     | code              | meaning                                                           |
| ---------- | ----------------- | ----------------------------------------------------------------- |
| c, c_0     | `cond`, `uncond`  | keyword tensors of the model, `[B, …]` each (e.g. labels, context) |
| s          | `guidance_scale`  | guidance weight; s = 1 is the conditional model alone              |
| out        |                   | out_0 + s (out_c - out_0) (Ho & Salimans 2022, Eq. 6, with w = s - 1) |

Guidance acts in the model's own prediction space (eps, x0 or v alike: the map between them is affine
in the output for fixed x_t, so the result is the same). A learned-variance output (2C channels) is
guided on its first C channels only; the variance half comes from the conditional branch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["Conditions", "check_conditions", "classifier_free_guidance"]

Conditions = Mapping[str, Any] | None


def _batched(value: Any) -> bool:
    return isinstance(value, Tensor) and value.ndim >= 1


def check_conditions(cond: Conditions, uncond: Conditions, batch_size: int) -> None:
    """Raise ValueError unless cond/uncond are keyword dicts whose tensors have batch `batch_size`."""
    for name, c in (("cond", cond), ("uncond", uncond)):
        if c is None:
            continue
        if not isinstance(c, Mapping):
            raise ValueError(
                f"{name} must be a dict of model keyword arguments, e.g. {{'class_labels': labels}}; "
                f"got {type(c).__name__}"
            )
        for key, value in c.items():
            if _batched(value) and value.shape[0] != batch_size:
                raise ValueError(
                    f"{name}[{key!r}] has batch {value.shape[0]} but the noise has batch {batch_size}; "
                    f"give one condition per sample (expand a shared one with .expand({batch_size}, …))"
                )
    if cond is not None and uncond is not None and set(cond) != set(uncond):
        raise ValueError(
            f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}; "
            "uncond holds the 'null' value of each condition (null class label, empty-prompt embedding)"
        )


def _merge(uncond: Mapping[str, Any], cond: Mapping[str, Any]) -> dict[str, Any]:
    """Stack uncond and cond on the batch dim, `[2B, …]`; unbatched values must agree."""
    merged = {}
    for key, c in cond.items():
        u = uncond[key]
        if _batched(c) or _batched(u):
            if not (_batched(c) and _batched(u)):
                raise ValueError(f"cond[{key!r}] and uncond[{key!r}] must both be batched tensors")
            merged[key] = torch.cat([u.to(c.device), c])
        else:
            same = torch.equal(c, u) if isinstance(c, Tensor) and isinstance(u, Tensor) else c is u or c == u
            if not same:
                raise ValueError(
                    f"cond[{key!r}] and uncond[{key!r}] differ but are not batched tensors; "
                    "give them as tensors with one row per sample"
                )
            merged[key] = c
    return merged


def classifier_free_guidance(
    model: Callable[..., Tensor],
    *,
    guidance_scale: float = 1.0,
    cond: Conditions = None,
    uncond: Conditions = None,
    batch_size: int | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """`model` seen as f(x_t `[B, C, …]`, t `[B]`) with guidance (Ho & Salimans 2022, Eq. 6): one forward on
    the stacked `[2B, …]` batch (uncond first), out_0 + s (out_c - out_0); s = 1 calls the conditional model
    alone, s = 0 the unconditional one."""
    if batch_size is not None:
        check_conditions(cond, uncond, batch_size)
    cond = dict(cond or {})
    scale = float(guidance_scale)
    if scale == 1.0:
        return lambda x, t: model(x, t, **cond)
    if uncond is None:
        raise ValueError(
            f"guidance_scale={scale:g} needs uncond=, the model's 'null' condition (e.g. the null class "
            "label or the empty-prompt embedding); use guidance_scale=1 for the conditional model alone"
        )
    uncond = dict(uncond)
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
    if scale == 0.0:
        return lambda x, t: model(x, t, **uncond)
    merged = _merge(uncond, cond)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), **merged)
        out_u, out_c = out.chunk(2)
        channels = x.shape[1]
        if out.shape[1] == 2 * channels:
            pred = torch.lerp(out_u[:, :channels], out_c[:, :channels], scale)
            return torch.cat([pred, out_c[:, channels:]], dim=1)
        return torch.lerp(out_u, out_c, scale)

    return guided
