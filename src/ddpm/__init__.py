"""ddpm: denoising diffusion models in PyTorch, from the DDPM mathematics to Stable-Diffusion-compatible
text-to-image. See README.md for the tour and ARCHITECTURE.md for the map; `ddpm.sample` is the one
sampling call, `ddpm.invert` its DDIM inverse.

Every subpackage is reachable as `ddpm.<name>` and imported on first use, so `import ddpm` (and the CLI's
start-up, `ddpm --help`) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

# The public rooms, from the top of ARCHITECTURE.md's layer picture down.
SUBPACKAGES = (
    "cli", "server", "editing", "pipelines", "training", "evaluation", "io", "conditioning", "models", "nn",
    "text",
    "sampling", "objectives", "guidance", "degradations", "process", "schedules", "noise", "data", "config",
    "configs",
)  # fmt: skip
__all__ = ["sample", "invert", *SUBPACKAGES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("sample", "invert"):
        from . import sampling

        return getattr(sampling, name)
    if name in SUBPACKAGES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, "SUBPACKAGES", "__doc__", "__file__", "__name__", "__path__"})
