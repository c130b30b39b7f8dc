"""SCAFFOLD, server half: ``c`` goes out with the model, the clients' changes come back."""

from __future__ import annotations

from typing import Any

from fedllm.algorithms.scaffold.control import ServerControl
from fedllm.message import Message
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.server.validate import params_problem
from fedllm.types import ClientUpdate, Params


class ScaffoldServer(ServerPlugin):
    """Broadcasts ``c``; refuses an update whose ``c_i+ - c_i`` doesn't match ``c``; folds
    the accepted changes into ``c`` at the end of the round, even when the model is left
    unchanged (those clients have already moved their ``c_i``).

    Args:
        template: the exchanged (shared) state: names, shapes, dtypes of ``c``.
        num_clients: ``N``, the federation's size.
    """

    name = "scaffold"

    def __init__(self, template: Params, num_clients: int) -> None:
        self.control = ServerControl(template, num_clients)

    def begin_round(self, ctx: RoundContext) -> None:
        self.control.start()

    def broadcast(self, ctx: RoundContext) -> Message:
        return Message(arrays=self.control.control)

    def check(self, ctx: RoundContext, update: ClientUpdate) -> str | None:
        problem = params_problem(update.parts.get(self.name, {}), self.control.control)
        return None if problem is None else f"control variate: {problem}"

    def accept(self, ctx: RoundContext, update: ClientUpdate, weight: float) -> None:
        self.control.add(update.parts[self.name])

    def end_round(self, ctx: RoundContext) -> None:
        self.control.finish()

    def state(self) -> tuple[Params, dict[str, Any]]:
        return self.control.control, {}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        if set(tensors) != set(self.control.control):
            raise ValueError(
                f"the checkpoint's SCAFFOLD control variate has {len(tensors)} tensor(s), "
                f"expected {len(self.control.control)} (a checkpoint of another run?)"
            )
        self.control.control = tensors
