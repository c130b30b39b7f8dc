"""LoRA-update screening (``[algorithm.screening]``): each round, before the aggregator,
the server computes spectral features of every client's update (from each LoRA layer's
product change, without running the model; :mod:`.features`), flags the clients whose
features are outliers of the round by a robust z-score, and records the flags (with a
simulated attack, how they compare with the malicious clients: TP/FP/FN/TN per round,
TPR/FPR in ``summary.json``). ``action = "exclude"`` also leaves them out.

It wraps whatever aggregator the run has (the mean, a robust rule): a round-wide
statistic needs every update of the round, which a per-update ``check`` never sees; and
an excluded client is recorded as the aggregator's exclusions are. Like every batch
aggregator it holds the round's updates in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.security.screening.settings import ScreeningSettings

if TYPE_CHECKING:
    from fedllm.config import Config

HIDES_UPDATES = "it reveals only the sum of the updates, and screening needs each one"


@ALGORITHMS.register("screening")
class Screening:
    """The update screen around the run's aggregator."""

    order = 88  # after the rules that replace the aggregator: it wraps theirs
    settings = ScreeningSettings
    modes = ("federated",)
    modes_why = "only a federated run's server receives client updates"

    def setting(self, config: Config) -> str | None:
        chosen: ScreeningSettings = config.settings_of("screening")
        return "algorithm.screening.enabled = true" if chosen.enabled else None

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        return [
            ("secagg", HIDES_UPDATES),
            ("he", HIDES_UPDATES),
            ("central_dp", "its noise is calibrated to the plain mean of clipped updates"),
            ("hetero_rank", "rank-padded updates are combined by their own rule, unscreened"),
        ]

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.security.attacks.settings import NO_ATTACK
        from fedllm.security.attacks.targets import malicious_clients
        from fedllm.security.defenses.round_rule import feeding
        from fedllm.security.screening.screen import UpdateScreen

        config = setup.ws.config
        if setup.mode != "federated" or setup.partial or self.setting(config) is None:
            return None
        attack = config.attack
        malicious = malicious_clients(attack, setup.clients, config.seed) if attack.on else None
        data_attack = attack.data != NO_ATTACK
        screen = UpdateScreen(
            config.settings_of("screening"), malicious, 1 if data_attack else attack.from_round
        )
        return feeding(screen, wrap=screen.wrap)
