"""Name -> factory registries, so every component is picked by name from config."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownComponentError(KeyError):
    """A name that no registry entry answers to."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of factories.

    Args:
        kind: what the entries are, used in error messages (e.g. ``"server optimizer"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry called ``name``; a clear error listing the valid names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """``'x' is not a known <kind>; choose one of a, b (did you mean a?)``."""
        hint = difflib.get_close_matches(name, self.names(), n=1)
        tail = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{name!r} is not a known {self.kind}; choose one of {', '.join(self.names())}{tail}"

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
