"""Personal parameters (``[personal]``): parts of the model that never leave a client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup, ModeError
from fedllm.settings import Section

if TYPE_CHECKING:
    from fedllm.algorithms.personal.split import PersonalState
    from fedllm.config import Config
    from fedllm.types import ClientId, Params


class PersonalConfig(Section):
    keys: list[str] = Field(
        default_factory=list,
        description="Glob patterns over trainable parameter names that stay on each client "
        "(e.g. ['*lora_B*']); federated mode only.",
    )
    prompt_tokens: int = Field(
        0, ge=0, description="Trailing virtual tokens of a soft prompt that stay on each client."
    )


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
        from fedllm.algorithms.personal.client import PersonalPlugin
        from fedllm.algorithms.personal.split import PersonalSplit, PersonalState

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
