"""The registries of every component chosen by name in the config.

Implementations register themselves on import. Each registry knows its
built-in names and the module registering each, so the names can be checked
without importing torch; a lookup imports the module (:func:`load_builtin`
imports them all). A user adds a component by registering it before the run
starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from fedllm.registry import Registry


def _homes(module: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), module)


def _each_own_module(package: str, names: str) -> dict[str, str]:
    return {name: f"{package}.{name}" for name in names.split()}


# Each built-in name and the module registering it: checking a config's names (and
# `fedllm config`) then imports none of them, nor the torch they import.
DATA_SOURCES: Registry[Any] = Registry(
    "data source", _homes("fedllm.data.sources", "chitchat chatterbot pydoc")
)
PARTITIONERS: Registry[Any] = Registry(
    "partitioner",
    _homes("fedllm.data.partition", "natural iid dirichlet")
    | _homes("fedllm.data.skew", "shards quantity")
    | _homes("fedllm.data.topic", "topic"),
)
METHODS: Registry[Any] = Registry(
    "method",
    _each_own_module("fedllm.model.methods", "lora full prompt ptuning prefix ia3 adapter"),
)
SERVER_OPTIMIZERS: Registry[Any] = Registry(
    "server optimizer",
    _homes("fedllm.server.optimizer", "fedavg fedavgm nesterov fedadagrad fedyogi fedadam"),
)
AGGREGATORS: Registry[Any] = Registry(
    "aggregator",
    _homes("fedllm.aggregate.mean", "mean")
    | _each_own_module(
        "fedllm.security.defenses",
        "median trimmed_mean krum bulyan geometric_median norm_bound centered_clip fltrust "
        "foolsgold flame",
    )
    | _homes("fedllm.security.defenses.krum", "multi_krum"),
)
ALGORITHMS: Registry[Any] = Registry(
    "algorithm",
    _each_own_module(
        "fedllm.algorithms",
        "personal scaffold fednova hetero_rank fedprox public_mix kept_optimizer public_server "
        "run_schedule",
    )
    | _each_own_module("fedllm.privacy", "central_dp local_dp")
    | _each_own_module("fedllm.secure", "secagg he")
    | _each_own_module("fedllm.security", "cleaning freelb")
    | _homes("fedllm.security.attacks.algorithm", "update_attack")
    | _homes("fedllm.security.attacks.data_attack", "data_attack")
    | _homes("fedllm.security.attacks.budget", "attack_budget")
    | _each_own_module("fedllm.security.defenses", "centered_clip fltrust foolsgold flame")
    | _each_own_module("fedllm.security", "screening")
    | _homes("fedllm.security.forensics", "keep_updates"),
)
ATTACKS: Registry[Any] = Registry(
    "attack",
    _each_own_module("fedllm.security.attacks", "sign_flip scale noise free_ride alie ipm min_max")
    | _homes("fedllm.security.attacks.min_max", "min_sum")
    | _each_own_module("fedllm.security.attacks", "backdoor targeted flip safety"),
)
"""Simulated attacks (``attack.data``, ``attack.update``): each entry has ``kind``
(``"data"`` or ``"update"``) and may have ``settings`` (its ``[attack.<name>]`` model)."""
REGISTRIES = (
    DATA_SOURCES,
    PARTITIONERS,
    METHODS,
    SERVER_OPTIMIZERS,
    AGGREGATORS,
    ALGORITHMS,
    ATTACKS,
)


def load_builtin() -> None:
    """Import every built-in component module so that it registers."""
    for registry in REGISTRIES:
        for module in sorted(set(registry.homes.values())):
            importlib.import_module(module)


def named_fields() -> list[tuple[str, Registry[Any]]]:
    """``(section.key, registry)`` for each config field that names a component."""
    return [
        ("data.source", DATA_SOURCES),
        ("data.partition", PARTITIONERS),
        ("method.kind", METHODS),
        ("server.optimizer", SERVER_OPTIMIZERS),
        ("server.aggregator", AGGREGATORS),
    ]


MODES = ("federated", "local", "centralized")


def active_algorithms(config: Any) -> list[tuple[str, Any]]:
    """``(name, factory)`` of every registered algorithm ``config`` turns on, in hook
    order. Imports only the factories' modules, which import their halves when built."""
    factories = [(name, ALGORITHMS.get(name)()) for name in ALGORITHMS.names()]
    active = [(name, f) for name, f in factories if _setting(name, f, config) is not None]
    return sorted(active, key=lambda pair: pair[1].order)


def composition_problems(config: Any) -> list[str]:
    """Every reason the algorithms ``config`` turns on cannot run together.

    One check over the whole composition, from what each registered algorithm
    declares (see :class:`fedllm.composition.AlgorithmFactory`): the
    setting that turns it on, the modes it applies to, the algorithms it
    refuses to run with (and why), and a check of its own settings.
    """
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
    being named in ``federation.algorithms``; one without either is always on), or None
    when it is off."""
    if getattr(factory, "opt_in", False):
        named = name in config.federation.algorithms
        return f"federation.algorithms = [{name!r}]" if named else None
    setting = getattr(factory, "setting", None)
    if setting is None:  # declares no switch: on in every run
        return f"algorithm {name!r}"
    result: str | None = setting(config)
    return result
