"""Conditioners: how a batch (training) or a request (sampling) becomes the model's keyword arguments.

A conditioner is an `nn.Module` trained together with the UNet (its parameters, if any, are optimised,
averaged by the EMA and checkpointed with it). The loop calls it as `conditioner(batch, drop)`, where
`drop [B]` (bool) marks the samples whose condition is replaced by the null condition for
classifier-free guidance (Ho & Salimans 2022); the decision is drawn from the training generator, so a
resumed run drops the same ones. New kinds register a factory with `register_conditioner(name, factory)`;
`factory(config, dataset) -> Conditioner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Conditioner",
    "Unconditional",
    "ClassConditioner",
    "register_conditioner",
    "make_conditioner",
    "CONDITIONERS",
]


class Conditioner(nn.Module):
    """Base: `forward(batch, drop) -> model kwargs`; `preview` gives the sample-grid conditions."""

    kind = "none"
    # Model-file key prefix of this conditioner's weights ("text_encoder." for text encoders).
    export_prefix = "conditioner."

    def forward(self, batch: dict[str, Any], drop: Tensor | None) -> dict[str, Tensor]:
        """Model kwargs for `batch` (a collated dict); samples with `drop[i]` get the null condition."""
        return {}

    def unet_fields(self) -> dict[str, Any]:
        """UNetConfig fields this conditioner fixes (e.g. num_classes, context_dim)."""
        return {}

    def preview(self, num: int, *, device: torch.device) -> tuple[int, dict | None, dict | None, int]:
        """(number of images, cond, uncond, images per row) for the preview grid written while training."""
        return num, None, None, max(1, int(round(num**0.5)))

    def meta(self) -> dict[str, Any]:
        """The "conditioning" section of the model file."""
        return {"type": self.kind, "num_classes": None, "text_encoder": None}


class Unconditional(Conditioner):
    """No conditioning: the model sees only x_t and t."""


class ClassConditioner(Conditioner):
    """Class labels `[B]`; a dropped sample gets the null class K (the last row of the UNet's class table)."""

    kind = "class"

    def __init__(self, num_classes: int, class_names: list[str] | None = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a class-conditional model needs at least one class, got {num_classes}")
        self.num_classes = int(num_classes)
        names = [str(k) for k in range(num_classes)] if class_names is None else list(class_names)
        self.class_names = names

    def forward(self, batch: dict[str, Any], drop: Tensor | None) -> dict[str, Tensor]:
        labels = batch["label"]
        if drop is not None:
            labels = torch.where(drop.to(labels.device), torch.full_like(labels, self.num_classes), labels)
        return {"class_labels": labels}

    def unet_fields(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def preview(self, num: int, *, device: torch.device) -> tuple[int, dict | None, dict | None, int]:
        """One row per class, max(1, num // K) images each."""
        per_class = max(1, num // self.num_classes)
        labels = torch.arange(self.num_classes, device=device).repeat_interleave(per_class)
        null = torch.full_like(labels, self.num_classes)
        return labels.numel(), {"class_labels": labels}, {"class_labels": null}, per_class

    def meta(self) -> dict[str, Any]:
        return {"type": "class", "num_classes": self.num_classes, "text_encoder": None}


def _none_factory(config: Any, dataset: Any) -> Conditioner:
    return Unconditional()


def _class_factory(config: Any, dataset: Any) -> Conditioner:
    k = getattr(dataset, "num_classes", None)
    if not k:
        raise ValueError(
            f"data.condition = 'class' needs a labelled dataset; {config.data.dataset!r} has no classes "
            "(use class sub-folders, or set data.condition = 'none')"
        )
    return ClassConditioner(k, getattr(dataset, "class_names", None))


CONDITIONERS: dict[str, Callable[[Any, Any], Conditioner]] = {"none": _none_factory, "class": _class_factory}


def register_conditioner(
    name: str, factory: Callable[[Any, Any], Conditioner], *, replace: bool = False
) -> None:
    """Make `data.condition = name` build its conditioner with `factory(config, dataset)`."""
    if name in CONDITIONERS and CONDITIONERS[name] is not factory and not replace:
        raise ValueError(f"a conditioner {name!r} is already registered; pass replace=True to override it")
    CONDITIONERS[name] = factory


def make_conditioner(config: Any, dataset: Any) -> Conditioner:
    """The conditioner for `config.data.condition`."""
    name = config.data.condition
    if name not in CONDITIONERS:
        known = sorted(CONDITIONERS)
        raise ValueError(f"data.condition = {name!r} has no conditioner registered (known: {known})")
    return CONDITIONERS[name](config, dataset)
