"""The registries of every component chosen by name in the config.

Implementations register themselves on import; :func:`load_builtin` imports
them all, so a lookup sees the full set. A user adds a component by
registering it before the run starts.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedllm.registry import Registry

DATA_SOURCES: Registry[Any] = Registry("data source")
PARTITIONERS: Registry[Any] = Registry("partitioner")
METHODS: Registry[Any] = Registry("method")
SERVER_OPTIMIZERS: Registry[Any] = Registry("server optimizer")
AGGREGATORS: Registry[Any] = Registry("aggregator")

_BUILTIN_MODULES = (
    "fedllm.data.sources",
    "fedllm.data.partition",
    "fedllm.data.skew",
    "fedllm.data.topic",
    "fedllm.model.methods",
    "fedllm.server.optimizer",
    "fedllm.aggregate.mean",
)


def load_builtin() -> None:
    """Import every built-in component module so that it registers."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def named_fields() -> list[tuple[str, Registry[Any]]]:
    """``(section.key, registry)`` for each config field that names a component."""
    load_builtin()
    return [
        ("data.source", DATA_SOURCES),
        ("data.partition", PARTITIONERS),
        ("method.kind", METHODS),
        ("server.optimizer", SERVER_OPTIMIZERS),
        ("server.aggregator", AGGREGATORS),
    ]
