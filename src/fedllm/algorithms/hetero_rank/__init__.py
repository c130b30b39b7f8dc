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


def _hetlora(_: AnyAggregator) -> AnyAggregator:
    from fedllm.algorithms.hetero_rank.sparsity import SparsityWeightedMean

    return SparsityWeightedMean()


REPLACES_MEAN = {"per_rank": _per_rank, "hetlora": _hetlora}
"""The rank aggregations that replace the configured weighted mean, and with what."""


@ALGORITHMS.register("hetero_rank")
class HeteroRank:
    """HetLoRA truncation on clients (see :mod:`fedllm.algorithms.hetero_rank.plan`); on
    the server HetLoRA's sparsity-weighted mean of the padded modules (``hetlora``, see
    :mod:`~fedllm.algorithms.hetero_rank.sparsity`), a mean of zero-padded deltas
    (``padded_deltas``) or a per-component mean (``per_rank``). HetLoRA's rank
    self-pruning is not implemented."""

    order = 40
    modes = ("federated",)
    modes_why = "ranks apply to federated training only; the reference modes train rank r"

    def setting(self, config: Config) -> str | None:
        if not config.method.heterogeneous_ranks:
            return None
        return "heterogeneous LoRA ranks (method.rank_min / method.ranks_by_client)"

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        refused = [
            ("scaffold", "control variates are not truncated to a client's rank"),
            ("personal", "personal LoRA factors are not truncated to a client's rank"),
        ]
        if config.method.rank_aggregation == "hetlora":
            refused.append(
                (
                    "fednova",
                    "method.rank_aggregation = 'hetlora' averages the clients' modules, not "
                    "FedNova's normalised deltas; set it to 'padded_deltas' or 'per_rank'",
                )
            )
        return refused

    def problem(self, config: Config) -> str | None:
        method, server = config.method, config.server
        rule = method.rank_aggregation
        if rule in REPLACES_MEAN and server.aggregator != "mean":
            return (
                f"method.rank_aggregation = {rule!r} replaces the weighted mean, but "
                f"server.aggregator = {server.aggregator!r}; set server.aggregator = "
                "'mean' or method.rank_aggregation = 'padded_deltas'"
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
        rule = method.rank_aggregation
        return Algorithm(
            "hetero_rank",
            client=RankPlugin(plan),
            server=RankExpansion(plan.rank_of, rule),
            aggregator=REPLACES_MEAN.get(rule),
        )
