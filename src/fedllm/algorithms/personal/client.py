"""Personal parameters, client half: merged in before training, kept out of the upload."""

from __future__ import annotations

from fedllm.algorithms.personal.split import PersonalState
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.types import ClientUpdate, Params


class PersonalPlugin(ClientPlugin):
    """Trains the broadcast plus the client's personal part; uploads the shared part only.

    Args:
        personal: the split and every client's personal parameters (on disk).
    """

    name = "personal"

    def __init__(self, personal: PersonalState) -> None:
        self.personal = personal

    def start(self, ctx: ClientContext, state: Params) -> Params:
        return self.personal.full_start(ctx.client_id, state)

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        return self.personal.keep(ctx.client_id, update)
