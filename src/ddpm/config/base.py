"""What every config dataclass shares: checks that raise a ValueError naming the key, and the
dict round trip (`to_dict` / `from_dict` / `replace`) of the architecture configs stored in model files."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["need", "choice", "DictConfig"]

T = TypeVar("T", bound="DictConfig")


def need(ok: bool, message: str) -> None:
    """Raise ValueError(message) unless `ok`."""
    if not ok:
        raise ValueError(message)


def choice(section: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise a ValueError naming `section.key` unless `value` is one of `choices`."""
    need(value in choices, f"{section}.{key} must be one of {list(choices)}; got {value!r}")


class DictConfig:
    """Mixin for dataclass configs: a JSON-able dict (tuples as lists) and back, unknown keys refused."""

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[T], d: Any) -> T:
        """Build from a dict such as `to_dict()` wrote; unknown keys are rejected by name."""
        valid = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; valid keys are {valid}")
        return cls(**d)

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed (validated like a new config)."""
        return type(self).from_dict({**self.to_dict(), **changes})
