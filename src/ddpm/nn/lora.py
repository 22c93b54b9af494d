"""Low-rank adapters (Hu et al. 2022, "LoRA") on the attention projections of a network.

Notation: W `[out, in]` the frozen weight of one linear layer; A `[r, in]`, B `[out, r]` the adapter of
rank r; s the scale:

    h = W x + s (alpha / r) B A x          (Eq. 3; B starts at zero, so the adapted layer starts as W)

At s = 0 the adapted layer returns W x itself (the adapter's branch is skipped, not multiplied by zero),
so a network with adapters at scale 0 is the base network bit for bit. Only A and B train; the adapter's
tensors (`lora_state_dict`) are a few MB for SD 1.x's UNet where its full weights are 3.4 GB.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

__all__ = [
    "LoRALinear",
    "ATTENTION_PROJECTIONS",
    "add_lora",
    "remove_lora",
    "lora_layers",
    "lora_parameters",
    "set_lora_scale",
    "lora_state_dict",
    "load_lora_state_dict",
]

# Names of the linear layers of ddpm's attention modules (nn/attention.py): CrossAttention's to_q/k/v and
# to_out.0 (self- and cross-attention of the transformer blocks), AttentionBlock's qkv and proj_out.
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "qkv", "proj_out")


class LoRALinear(nn.Module):
    """`base` (an nn.Linear, frozen) plus a rank-`rank` update `scale * alpha / rank * B A`."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float | None = None, scale: float = 1.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRA adapts nn.Linear layers, got {type(base).__name__}")
        if (
            isinstance(rank, bool)
            or int(rank) != rank
            or not 1 <= rank <= min(base.in_features, base.out_features)
        ):
            raise ValueError(
                f"LoRA rank must be a whole number in 1 … {min(base.in_features, base.out_features)} "
                f"(the layer is {base.in_features} -> {base.out_features}), got {rank!r}"
            )
        self.base = base.requires_grad_(False)
        self.rank = int(rank)
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = float(scale)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(self.rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if self.scale == 0.0:
            return y
        update = nn.functional.linear(nn.functional.linear(x, self.lora_A), self.lora_B)
        return y + (self.scale * self.alpha / self.rank) * update

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}"


def _matches(name: str, targets: Iterable[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(
    network: nn.Module,
    *,
    rank: int = 4,
    alpha: float | None = None,
    scale: float = 1.0,
    targets: Iterable[str] = ATTENTION_PROJECTIONS,
) -> list[str]:
    """Wrap every nn.Linear of `network` whose qualified name ends in one of `targets` in a `LoRALinear`
    (in place); freeze everything else. Returns the wrapped names; an error if none matched."""
    targets = tuple(targets)
    if any(isinstance(m, LoRALinear) for m in network.modules()):
        raise ValueError("this network already has LoRA adapters; remove_lora() first")
    names = [n for n, m in network.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    if not names:
        raise ValueError(f"no linear layer of this network is named like {list(targets)}; nothing to adapt")
    network.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, child, LoRALinear(getattr(parent, child), rank=rank, alpha=alpha, scale=scale))
    return names


def remove_lora(network: nn.Module) -> None:
    """Put the base linear layers back in place of their adapters (the adapters' updates are dropped)."""
    for name, _ in list(lora_layers(network)):
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, child, getattr(parent, child).base)


def lora_layers(network: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(qualified name, layer) of every adapter in `network`."""
    for name, module in network.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The adapters' A and B: what an optimiser trains."""
    return [p for _, m in lora_layers(network) for p in (m.lora_A, m.lora_B)]


def set_lora_scale(network: nn.Module, scale: float) -> None:
    """Set s of every adapter (0 = the base network exactly)."""
    for _, m in lora_layers(network):
        m.scale = float(scale)


def lora_state_dict(network: nn.Module) -> dict[str, Tensor]:
    """`{name.lora_A, name.lora_B}` of every adapter, plus `name.alpha` (a 0-d tensor) and one `rank`."""
    out: dict[str, Tensor] = {}
    for name, m in lora_layers(network):
        out[f"{name}.lora_A"] = m.lora_A.detach()
        out[f"{name}.lora_B"] = m.lora_B.detach()
        out[f"{name}.alpha"] = torch.tensor(m.alpha)
    if not out:
        raise ValueError("this network has no LoRA adapters (add_lora() first)")
    return out


def load_lora_state_dict(network: nn.Module, state: dict[str, Tensor], *, scale: float = 1.0) -> list[str]:
    """Add adapters to `network` (a base network without any) where `state` has them and load their values;
    an error naming the first layer that is missing or of another shape. Returns the adapted names."""
    names = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".lora_A")})
    if not names:
        raise ValueError("the adapter holds no LoRA tensors (*.lora_A / *.lora_B)")
    ranks = {int(state[f"{n}.lora_A"].shape[0]) for n in names}
    if len(ranks) != 1:
        raise ValueError(f"the adapter mixes ranks {sorted(ranks)}; it was not written by lora_state_dict")
    alphas = {float(state[f"{n}.alpha"]) for n in names if f"{n}.alpha" in state}
    modules = dict(network.named_modules())
    for n in names:
        if not isinstance(modules.get(n), nn.Linear):
            raise ValueError(f"the adapter is for a layer {n!r} that this network lacks; it belongs to "
                             "another model")  # fmt: skip
    add_lora(network, rank=ranks.pop(), alpha=alphas.pop() if len(alphas) == 1 else None, scale=scale,
             targets=names)  # fmt: skip
    adapted = dict(lora_layers(network))
    with torch.no_grad():
        for n in names:
            layer = adapted[n]
            for key in ("lora_A", "lora_B"):
                value, param = state[f"{n}.{key}"], getattr(layer, key)
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(f"adapter tensor {n}.{key} has shape {tuple(value.shape)}, the layer "
                                     f"needs {tuple(param.shape)}; it belongs to another model")  # fmt: skip
                param.copy_(value)
    return names
