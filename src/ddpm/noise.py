"""Seeded Gaussian noise that does not depend on batch size, batch position or device.

All noise is drawn on the CPU in float32, then moved and cast: a torch.Generator gives the same numbers
on every machine, while CUDA generators differ from CPU ones and between GPUs. With a list of
generators, row i of every draw comes from generator i alone, so an image depends only on its own seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Generators", "randn", "check_generators", "noise_source"]

Generators = torch.Generator | Sequence[torch.Generator] | None


def check_generators(generator: Generators, batch_size: int) -> None:
    """Raise ValueError unless `generator` is None, one CPU generator, or a list of `batch_size` of them."""
    gens = [generator] if isinstance(generator, torch.Generator) else generator
    if gens is None:
        return
    if not isinstance(gens, Sequence) or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(
            "generator must be a torch.Generator or a list of them, one per sample; "
            f"got {type(generator).__name__}"
        )
    if not isinstance(generator, torch.Generator) and len(gens) != batch_size:
        raise ValueError(
            f"got {len(gens)} generators for a batch of {batch_size}; pass exactly one per sample "
            "(or a single generator for the whole batch)"
        )
    for g in gens:
        if g.device.type != "cpu":
            raise ValueError(
                f"generators must live on the CPU (noise is drawn there so seeds reproduce on any device); "
                f"got one on {g.device}: use torch.Generator().manual_seed(seed)"
            )


def randn(
    shape: Sequence[int],
    *,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard-normal noise `shape` drawn on the CPU (row i from `generator[i]` when given a list)."""
    shape = tuple(shape)
    check_generators(generator, shape[0] if shape else 0)
    return _draw(shape, generator).to(device=device, dtype=dtype)


def _draw(shape: tuple[int, ...], generator: Generators) -> Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=torch.float32)
    row = (1, *shape[1:])
    return torch.cat([torch.randn(row, generator=g, dtype=torch.float32) for g in generator])


def noise_source(generator: Generators) -> Callable[[Tensor], Tensor]:
    """A function returning fresh noise shaped, placed and typed like its argument."""
    check_generators(
        generator, 0 if generator is None or isinstance(generator, torch.Generator) else len(generator)
    )

    def noise_like(x: Tensor) -> Tensor:
        return _draw(tuple(x.shape), generator).to(device=x.device, dtype=x.dtype)

    return noise_like
