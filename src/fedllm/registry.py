"""Name -> factory registries, so every component is picked by name from config."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownComponentError(KeyError):
    """A name that no registry entry answers to."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of factories.

    Built-in entries may be declared by the module that registers them
    (``homes``): their names are known, for config checks and error messages,
    without importing that module (and the torch it imports); the first
    :meth:`get` imports it.

    Args:
        kind: what the entries are, used in error messages (e.g. ``"server optimizer"``).
        homes: each declared name and the module that registers it on import.
    """

    def __init__(self, kind: str, homes: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.homes: dict[str, str] = dict(homes or {})
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def add(obj: T) -> T:
            home = self.homes.get(name)
            if name in self._entries or (home is not None and _module(obj) != home):
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The entry called ``name``; a clear error listing the valid names otherwise."""
        if name not in self._entries and name in self.homes:
            importlib.import_module(self.homes[name])
            if name not in self._entries:
                raise RuntimeError(
                    f"module {self.homes[name]} is declared as the home of {self.kind} "
                    f"{name!r} but did not register it"
                )
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
        """All registered and declared names, sorted."""
        return sorted(self._entries.keys() | self.homes.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.homes


def _module(obj: object) -> str | None:
    """The module that defines ``obj`` (a class or function), if it says."""
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else None
