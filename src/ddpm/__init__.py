"""ddpm: denoising diffusion models in PyTorch, from the DDPM mathematics to Stable-Diffusion-compatible
text-to-image. See README.md for the tour; `ddpm.sample` is the one sampling call."""

from __future__ import annotations

from typing import Any

from . import process, schedules

__version__ = "0.1.0"
__all__ = ["sample", "schedules", "process", "__version__"]


def __getattr__(name: str) -> Any:
    # Samplers import lazily so that `import ddpm` (and the CLI's start-up) stays cheap.
    if name == "sample":
        from .sampling import sample

        return sample
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
