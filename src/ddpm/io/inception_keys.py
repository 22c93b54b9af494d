"""Where the FID Inception-v3's weights sit in the files people have, and which file a state dict came from.

Our module names are the names the TensorFlow 2015 graph got when it was ported to PyTorch (torchvision's
`Inception3` attributes: `Conv2d_1a_3x3`, `Mixed_5b.branch5x5_1`, …, `fc`), so both published weights files
load without renaming; they differ in what else they hold:

| layout               | file                                          | keys                               |
| -------------------- | --------------------------------------------- | ---------------------------------- |
| `torch-fidelity`     | `weights-inception-2015-12-05-6726825d.pth`   | ours exactly: conv weights, BN     |
|                      |                                               | weight, bias, running stats, `fc`  |
| `pytorch-fid`        | `pt_inception-2015-12-05-6726825d.pth`        | ours, from torchvision `Inception3`|
|                      |                                               | with BN `num_batches_tracked` (and |
|                      |                                               | `AuxLogits.*` if one was kept)     |
| `pytorch-fid-module` | `state_dict()` of pytorch-fid's `InceptionV3` | `blocks.i.j.*` (`BLOCKS`), no `fc` |

The counters and the auxiliary head do not change the features; they are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["BLOCKS", "LAYOUTS", "detect_layout", "to_ours", "from_ours"]

LAYOUTS = ("torch-fidelity", "pytorch-fid", "pytorch-fid-module")

# pytorch-fid's InceptionV3 wrapper: four nn.Sequential blocks in a ModuleList `blocks`; the pools between
# them hold no weights. Written ours -> theirs, inverted for reading.
BLOCKS: dict[str, str] = {
    "Conv2d_1a_3x3": "blocks.0.0", "Conv2d_2a_3x3": "blocks.0.1", "Conv2d_2b_3x3": "blocks.0.2",
    "Conv2d_3b_1x1": "blocks.1.0", "Conv2d_4a_3x3": "blocks.1.1",
    "Mixed_5b": "blocks.2.0", "Mixed_5c": "blocks.2.1", "Mixed_5d": "blocks.2.2", "Mixed_6a": "blocks.2.3",
    "Mixed_6b": "blocks.2.4", "Mixed_6c": "blocks.2.5", "Mixed_6d": "blocks.2.6", "Mixed_6e": "blocks.2.7",
    "Mixed_7a": "blocks.3.0", "Mixed_7b": "blocks.3.1", "Mixed_7c": "blocks.3.2",
}  # fmt: skip
_FROM_BLOCKS = {v: k for k, v in BLOCKS.items()}
_DROPPED = (".num_batches_tracked",)


def detect_layout(keys: Mapping[str, Tensor] | list[str]) -> str:
    """One of `LAYOUTS`, from the key names alone (see the module table)."""
    names = list(keys)
    if any(k.startswith("blocks.") for k in names):
        return "pytorch-fid-module"
    if any(k.endswith(_DROPPED) or k.startswith("AuxLogits.") for k in names):
        return "pytorch-fid"
    return "torch-fidelity"


def _module_of(key: str, table: Mapping[str, str]) -> str | None:
    """The table entry that is the longest module path prefix of `key`."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        hit = table.get(".".join(parts[:n]))
        if hit is not None:
            return ".".join([hit, *parts[n:]])
    return None


def to_ours(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """(our state dict, its layout): counters and the auxiliary head dropped, `blocks.i.j` renamed.

    A key that belongs to no Inception module is kept under its own name, so the loader can name it.
    """
    layout = detect_layout(state_dict)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(_DROPPED) or key.startswith("AuxLogits."):
            continue
        if layout == "pytorch-fid-module":
            key = _module_of(key, _FROM_BLOCKS) or key
        out[key] = value
    return out, layout


def from_ours(state_dict: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Our state dict written in `layout` (the inverse of `to_ours`; `pytorch-fid` adds zero counters)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown Inception weights layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if layout == "pytorch-fid-module":
            if key.startswith("fc."):
                continue  # the wrapper stops at the pool features
            key = _module_of(key, BLOCKS) or key
        out[key] = value
        if layout == "pytorch-fid" and key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    return out
