"""Update forensics (``server.keep_updates = true``): each round's accepted client
updates and the aggregate the rule made of them, on disk, so defenses can be studied
and screening classifiers trained offline (:mod:`.keep` writes them).

Off by default: a run then writes one update per client per round. Refused with SecAgg+
and CKKS, which exist so that the server never sees an individual update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config

HIDDEN = (
    "it hides each client's update from the server, which sees only their sum: there is no "
    "individual update to keep, and keeping one would undo what it protects"
)


@ALGORITHMS.register("keep_updates")
class KeepUpdates:
    """Writes ``updates/round_<r>.safetensors`` and ``updates/round_<r>.json`` in the run
    directory each round the model steps."""

    order = 1  # its process() sees the aggregate before any other plug-in changes it
    modes = ("federated",)
    modes_why = "only a federated run's server receives client updates"

    def setting(self, config: Config) -> str | None:
        return "server.keep_updates = true" if config.server.keep_updates else None

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        return [("secagg", HIDDEN), ("he", HIDDEN)]

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.security.attacks.targets import malicious_clients
        from fedllm.security.forensics.keep import UpdateKeeper

        config = setup.ws.config
        if setup.mode != "federated" or setup.partial or not config.server.keep_updates:
            return None
        attack = config.attack
        malicious = malicious_clients(attack, setup.clients, config.seed) if attack.on else None
        folder = setup.store.root.parent / "updates"  # the run directory's (beside clients/)
        return Algorithm("keep_updates", server=UpdateKeeper(folder, malicious))
