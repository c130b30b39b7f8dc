"""Personal parameters (``[personal]``): parts of the model that never leave a client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.config import Config
from fedllm.federation.algorithms.base import Algorithm, AlgorithmSetup, ModeError

if TYPE_CHECKING:
    from fedllm.client.personal import PersonalState
    from fedllm.types import ClientId, Params


@dataclass
class PersonalView:
    """The server holds the shared part; each client's model adds its own part."""

    personal: PersonalState

    def shared(self, full: Params) -> Params:
        return self.personal.split.split(full)[0]

    def global_only(self, shared: Params) -> Params:
        return self.personal.split.merge(shared, self.personal.initial)

    def of_client(self, client_id: ClientId, shared: Params) -> Params:
        return self.personal.full_start(client_id, shared)


@ALGORITHMS.register("personal")
class Personal:
    """On when ``personal.keys`` or ``personal.prompt_tokens`` select anything."""

    order = 10

    def setting(self, config: Config) -> str | None:
        personal = config.personal
        parts = [f"personal.keys = {personal.keys}"] if personal.keys else []
        if personal.prompt_tokens:
            parts.append(f"personal.prompt_tokens = {personal.prompt_tokens}")
        return ", ".join(parts) or None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.client.personal import PersonalSplit, PersonalState
        from fedllm.client.plugins.personal import PersonalPlugin

        split = PersonalSplit.from_config(setup.ws.config.personal)
        if not split.active:
            return None
        if setup.mode != "federated":
            raise ModeError(
                f"[personal] applies to federation.mode = 'federated', not "
                f"{setup.mode!r}: there is no shared model to personalise"
            )
        split.check(setup.ws.initial)
        personal = PersonalState(
            split, setup.store.slot("personal"), split.split(setup.ws.initial)[1]
        )
        return Algorithm("personal", client=PersonalPlugin(personal), view=PersonalView(personal))
