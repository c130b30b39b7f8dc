"""Test-only algorithms: a client plug-in turned on by name in a run's config."""

from __future__ import annotations

from collections.abc import Callable

from fedllm.client.plugin import ClientPlugin
from fedllm.components import ALGORITHMS, load_builtin
from fedllm.composition import Algorithm, AlgorithmSetup


def register_client_plugin(name: str, plugin: Callable[[], ClientPlugin], order: int = 90) -> None:
    """Register (once) an opt-in algorithm ``name`` whose client half is ``plugin()``:
    ``federation.algorithms = [name]`` turns it on. ``tests/integration/test_extension.py``
    spells such a factory out, as a user would."""
    load_builtin()
    if name in ALGORITHMS:
        return

    hook_order = order

    class ClientOnly:
        order = hook_order
        opt_in = True

        def build(self, setup: AlgorithmSetup) -> Algorithm:
            return Algorithm(name, client=plugin())

    ALGORITHMS.register(name)(ClientOnly)
