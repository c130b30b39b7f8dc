"""Package re-exports that import their module on first use (PEP 562).

A package's ``__init__`` lists which submodule defines each name it re-exports;
importing one light submodule (the config reads ``fedllm.data.settings``) then
does not import torch, transformers and datasets through the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: name -> ``package.<homes[name]>``'s name.

    Args:
        package: the package's ``__name__``.
        homes: each exported name and the submodule (relative to ``package``) that
            defines it.
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home}"), name)

    return __getattr__
