"""The registries of every component chosen by name in the config.

Implementations register themselves on import; :func:`load_builtin` imports
them all, so a lookup sees the full set. A user adds a component by
registering it before the run starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from fedllm.registry import Registry

DATA_SOURCES: Registry[Any] = Registry("data source")
PARTITIONERS: Registry[Any] = Registry("partitioner")
METHODS: Registry[Any] = Registry("method")
SERVER_OPTIMIZERS: Registry[Any] = Registry("server optimizer")
AGGREGATORS: Registry[Any] = Registry("aggregator")
ALGORITHMS: Registry[Any] = Registry("algorithm")

_BUILTIN_MODULES = (
    "fedllm.data.sources",
    "fedllm.data.partition",
    "fedllm.data.skew",
    "fedllm.data.topic",
    "fedllm.model.methods",
    "fedllm.server.optimizer",
    "fedllm.aggregate.mean",
    "fedllm.federation.algorithms.personal",
    "fedllm.federation.algorithms.scaffold",
    "fedllm.federation.algorithms.fednova",
    "fedllm.federation.algorithms.hetero_rank",
    "fedllm.federation.algorithms.fedprox",
    "fedllm.federation.algorithms.public_mix",
    "fedllm.federation.algorithms.kept_optimizer",
    "fedllm.federation.algorithms.public_server",
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


MODES = ("federated", "local", "centralized")


def composition_problems(config: Any) -> list[str]:
    """Every reason the algorithms ``config`` turns on cannot run together.

    One check over the whole composition, from what each registered algorithm
    declares (see :class:`fedllm.federation.algorithms.AlgorithmFactory`): the
    setting that turns it on, the modes it applies to, the algorithms it
    refuses to run with (and why), and a check of its own settings.
    """
    load_builtin()
    factories = {name: ALGORITHMS.get(name)() for name in ALGORITHMS.names()}
    active = {name: _setting(name, f, config) for name, f in factories.items()}
    active = {name: setting for name, setting in active.items() if setting is not None}
    mode = config.federation.mode
    problems: list[str] = []
    for name, setting in active.items():
        factory = factories[name]
        modes: Iterable[str] = getattr(factory, "modes", MODES)
        if mode not in modes:
            why = getattr(factory, "modes_why", f"it applies to {' and '.join(modes)} runs")
            problems.append(
                f"{setting} cannot be combined with federation.mode = {mode!r} ({why}); "
                "remove one of the two"
            )
        refuses = getattr(factory, "refuses", None)
        for other, why in refuses(config) if refuses is not None else ():
            if other in active:
                problems.append(
                    f"{setting} cannot be combined with {active[other]} ({why}); "
                    "remove one of the two"
                )
        check = getattr(factory, "problem", None)
        problem = check(config) if check is not None else None
        if problem is not None:
            problems.append(problem)
    return problems


def _setting(name: str, factory: Any, config: Any) -> str | None:
    """What turns an algorithm on in ``config`` (its own ``setting``; for an opt-in one,
    being named in ``federation.algorithms``), or None when it is off."""
    if getattr(factory, "opt_in", False):
        named = name in config.federation.algorithms
        return f"federation.algorithms = [{name!r}]" if named else None
    setting = getattr(factory, "setting", None)
    return setting(config) if setting is not None else None
