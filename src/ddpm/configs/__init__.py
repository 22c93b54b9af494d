"""Packaged run configs (TOML), found with `ddpm.configs.path(name)`; `demo.toml` is what `ddpm demo`
trains."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["path", "names"]


def names() -> list[str]:
    """The packaged config names (without .toml)."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def path(name: str) -> Path:
    """The file of packaged config `name` ("demo" or "demo.toml")."""
    stem = name[:-5] if name.endswith(".toml") else name
    file = resources.files(__name__) / f"{stem}.toml"
    if not file.is_file():
        raise FileNotFoundError(f"no packaged config {name!r}; packaged: {', '.join(names())}")
    return Path(str(file))
