"""ddpm: denoising diffusion models in PyTorch, from the DDPM mathematics to Stable-Diffusion-compatible
text-to-image. See README.md for the tour; `ddpm.sample` is the one sampling call."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
__all__ = ["sample", "schedules", "process", "__version__"]


def __getattr__(name: str) -> Any:
    # Everything imports lazily so that `import ddpm` (and the CLI's start-up, `ddpm --help`) stays cheap.
    if name == "sample":
        from .sampling import sample

        return sample
    if name in ("process", "schedules"):
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
