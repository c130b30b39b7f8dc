"""Heterogeneous LoRA ranks (``method.rank_min`` / ``method.ranks_by_client``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup, AnyAggregator

if TYPE_CHECKING:
    from fedllm.config import Config


def _per_rank(_: AnyAggregator) -> AnyAggregator:
    from fedllm.algorithms.hetero_rank.coverage import CoverageMean

    return CoverageMean()


@ALGORITHMS.register("hetero_rank")
class HeteroRank:
    """HetLoRA truncation on clients, padding (``pad``) or a per-component mean
    (``per_rank``) on the server (see :mod:`fedllm.algorithms.hetero_rank.plan`)."""

    order = 40
    modes = ("federated",)
    modes_why = "ranks apply to federated training only; the reference modes train rank r"

    def setting(self, config: Config) -> str | None:
        if not config.method.heterogeneous_ranks:
            return None
        return "heterogeneous LoRA ranks (method.rank_min / method.ranks_by_client)"

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        return [
            ("scaffold", "control variates are not truncated to a client's rank"),
            ("personal", "personal LoRA factors are not truncated to a client's rank"),
        ]

    def problem(self, config: Config) -> str | None:
        method, server = config.method, config.server
        if method.rank_aggregation == "per_rank" and server.aggregator != "mean":
            return (
                f"method.rank_aggregation = 'per_rank' replaces the weighted mean, but "
                f"server.aggregator = {server.aggregator!r}; set server.aggregator = "
                "'mean' or method.rank_aggregation = 'pad'"
            )
        return None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.algorithms.hetero_rank.client import RankPlugin
        from fedllm.algorithms.hetero_rank.plan import RankPlan, check_rank_clients
        from fedllm.algorithms.hetero_rank.server import RankExpansion

        method = setup.ws.config.method
        if not method.heterogeneous_ranks or setup.mode != "federated":
            return None
        if not setup.partial:
            check_rank_clients(method, setup.clients)
        plan = RankPlan(method, setup.ws.config.seed)
        per_rank = method.rank_aggregation == "per_rank"
        return Algorithm(
            "hetero_rank",
            client=RankPlugin(plan),
            server=RankExpansion(plan.rank_of, per_rank),
            aggregator=_per_rank if per_rank else None,
        )
