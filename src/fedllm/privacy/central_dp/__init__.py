"""User-level DP-FedAvg (``privacy.dp = 'central'``): the accountant's server half.

The mechanism itself is the pipeline's clip and noise stages
(:func:`fedllm.privacy.central_dp.stages.central_dp_stages`); this algorithm charges every
round to the accountant, reports epsilon, and stops the run before its budget is
exceeded (:class:`fedllm.privacy.ledger.PrivacyLedger`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config
    from fedllm.pipeline.stage import Stage


@ALGORITHMS.register("central_dp")
class CentralDP:
    """McMahan et al. (2018), with Andrew et al.'s (2021) adaptive clipping."""

    order = 90  # after every algorithm that changes the aggregate or the round
    modes = ("federated",)
    modes_why = "its guarantee is on the aggregate of a federation's clipped updates"

    def setting(self, config: Config) -> str | None:
        return "privacy.dp = 'central'" if config.privacy.dp == "central" else None

    def guarantee(self, config: Config) -> str:
        if config.secagg.enabled:
            return "user-level DP-FedAvg, the clients adding the noise under SecAgg+"
        return "user-level DP-FedAvg (the server, trusted with the clipped updates, adds the noise)"

    def problem(self, config: Config) -> str | None:
        privacy, server = config.privacy, config.server
        partial = server.clients_per_round < config.data.num_clients
        if privacy.accountant == "pld" and server.sampling == "uniform" and partial:
            return (
                "privacy.accountant = 'pld' cannot account fixed-size cohorts (sampling "
                f"{server.clients_per_round} of up to {config.data.num_clients} clients without "
                "replacement); use privacy.accountant = 'rdp', or server.sampling = 'poisson'"
            )
        if server.aggregator != "mean":  # the noise is calibrated to the clipped mean
            return (
                f"privacy.dp = 'central' calibrates its noise to the mean of clipped updates, "
                f"but server.aggregator = {server.aggregator!r} combines them otherwise (a "
                "robust rule moves past the clip's bound the noise covers): use "
                "server.aggregator = 'mean'"
            )
        return None

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        refused = [
            ("scaffold", "its control variates reach the server unclipped and without noise"),
            ("fednova", "it rescales the mean of clipped updates past the clip's bound"),
            (
                "hetero_rank",
                "it averages each entry over its own holders, which the noise does not follow",
            ),
        ]
        if config.public.server_steps > 0:  # a warm-up before round 1 touches no client
            refused.append(
                (
                    "public_server",
                    "the server's own weighted update breaks the uniform weights the noise "
                    "is calibrated for",
                )
            )
        return refused

    def stages(self, config: Config, population: int | None) -> list[Stage]:
        """DP-FedAvg's clip and noise, before the aggregator (on a node, ``population``
        is None: the clip and noise come with the broadcast)."""
        from fedllm.privacy.central_dp.stages import central_dp_stages

        return central_dp_stages(config, population)

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.privacy.central_dp.stages import central_plan
        from fedllm.privacy.ledger import PrivacyLedger

        config = setup.ws.config
        if config.privacy.dp != "central" or setup.mode != "federated" or setup.partial:
            return None  # a node only clips, with the clip the broadcast carries
        plan = central_plan(config, len(setup.clients))
        return Algorithm("central_dp", server=PrivacyLedger(plan), disclosure="server")
