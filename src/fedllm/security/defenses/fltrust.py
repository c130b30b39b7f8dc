"""FLTrust (Cao, Fang, Liu and Gong 2021, "FLTrust: Byzantine-robust Federated Learning
via Trust Bootstrapping", NDSS).

The server holds a small clean root dataset and computes its own update ``g_0`` on it
each round, from the global model, as a client would. Each client update ``g_i`` gets
the trust score ``TS_i = ReLU(cos(g_i, g_0))``, is rescaled to the root update's norm,
``g_i' = ||g_0|| / ||g_i|| * g_i``, and the aggregate is
``g = sum_i TS_i g_i' / sum_i TS_i``. ``g_0`` itself is not averaged in.

fedllm: the root dataset is the public corpus (``[public]``, ``public.source``: refused
at load without one), ``g_0`` is ``root_steps`` steps of the clients' own trainer on its
training split from the broadcast (``client.local_steps`` by default, the paper's "same
local iterations"), seeded by the round. ``g_i`` and ``g_0`` are flattened full updates
(all tensors concatenated; LoRA's ``A`` and ``B`` as coordinates: the cosine and the
norms are those of the factors' changes, not of ``B A``, and ``g_i'`` rescales both
factors' changes by one number). Client weights are not used (the paper's rule; a
Byzantine client could claim any number of examples). When every trust score is 0 the
aggregate is zero: the model stays where it was (the paper divides by zero there). The
clients with trust 0 are ``excluded``; each round's scores are recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from fedllm.components import AGGREGATORS, ALGORITHMS
from fedllm.composition import AlgorithmSetup
from fedllm.security.defenses.round_rule import RoundRule, RoundRuleAlgorithm
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when a round is aggregated
    import torch

    from fedllm.config import Config
    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params

RootUpdate = Callable[["Params", int], "Params"]
"""The server's update on its root data: given the broadcast and the round, its delta."""


class FLTrustSettings(Section):
    """``[aggregator.fltrust]``."""

    root_steps: int | None = Field(
        None,
        ge=1,
        description="Steps of the server's root update g_0 on the public corpus each round; "
        "none: client.local_steps (the clients' own).",
    )


def fltrust_combine(rows: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_i TS_i g_i' / sum_i TS_i`` over the rows, and the trust scores ``TS_i``
    (float64, ``[n]``); zero when every score is 0 (or the root update is zero).

    Args:
        rows: the clients' flattened updates, ``[n, d]``.
        root: the server's flattened root update ``g_0``, ``[d]``.
    """
    import torch

    from fedllm.security.defenses.flat import norms

    root64 = root.double()
    root_norm = float(root64.norm())
    lengths = norms(rows)
    dots = torch.stack([torch.dot(row.double(), root64) for row in rows])
    scale = lengths * root_norm
    trust = torch.where(scale > 0, dots / scale.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    trust = trust.clamp(min=0.0)
    total = float(trust.sum())
    if total <= 0:
        return torch.zeros(rows.shape[1], dtype=rows.dtype), trust
    rescale = torch.where(lengths > 0, root_norm / lengths.clamp(min=1e-300), 0.0)
    coefficients = trust * rescale / total
    return coefficients.to(rows.dtype) @ rows, trust


@AGGREGATORS.register("fltrust")
class FLTrust(RoundRule):
    """``server.aggregator = "fltrust"``: each update rescaled to the root update's norm,
    averaged with weights ``ReLU(cos(g_i, g_0))``.

    Args:
        settings: ``[aggregator.fltrust]``.
        root: computes ``g_0`` from the broadcast and the round (in a run: the server's
            training on the public corpus); None refuses to aggregate.
    """

    name = "fltrust"
    settings = FLTrustSettings

    def __init__(
        self, settings: FLTrustSettings | None = None, root: RootUpdate | None = None
    ) -> None:
        super().__init__()
        self.chosen = settings or FLTrustSettings()
        self.root = root

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        from fedllm.pipeline.stage import BatchResult, WeightedUpdate
        from fedllm.security.defenses.flat import stack, unstack

        if self.root is None:
            raise ValueError(
                "FLTrust needs the server's root update g_0 each round: in a run it trains "
                "on the public corpus (public.source); alone, give FLTrust(root=...)"
            )
        rows = stack(updates, reference)
        root = stack([WeightedUpdate("root", self.root(reference, self.round), 1.0)], reference)
        combined, trust = fltrust_combine(rows, root[0])
        scores = {u.client_id: float(t) for u, t in zip(updates, trust, strict=True)}
        self.last = {"trust": scores, "root_norm": float(root[0].double().norm())}
        excluded = [cid for cid, score in scores.items() if score <= 0]
        return BatchResult(unstack(combined, reference), excluded)


@ALGORITHMS.register("fltrust")
class FLTrustRoot(RoundRuleAlgorithm):
    """The server's root update for ``server.aggregator = "fltrust"``: the clients' trainer
    on the public corpus, from each round's broadcast."""

    rule_name = "fltrust"

    def problem(self, config: Config) -> str | None:
        if self.setting(config) is None or config.public.source is not None:
            return None
        return (
            "server.aggregator = 'fltrust' needs the server's root dataset, and public.source "
            "is unset: set public.source to a corpus the server holds (e.g. public.source = "
            "'chitchat'), or choose another server.aggregator"
        )

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        refused = [
            ("personal", "the root update trains the whole model, which personal parameters split")
        ]
        if config.public.server_steps > 0:
            refused.append(
                (
                    "public_server",
                    "public.server_steps adds the server's update to the clients', where "
                    "FLTrust would score it as a client; set public.server_steps = 0 (FLTrust "
                    "trains its own root update)",
                )
            )
        return refused

    def make(self, setup: AlgorithmSetup) -> RoundRule:
        from fedllm.security.defenses.root import RootTrainer

        config = setup.ws.config
        chosen: FLTrustSettings = config.aggregator_settings_of(self.rule_name)
        if setup.ws.public is None:  # the config check makes this unreachable from a run
            raise ValueError("server.aggregator = 'fltrust' needs public.source")
        steps = chosen.root_steps or config.client.local_steps
        return FLTrust(chosen, RootTrainer(setup.ws, setup.ws.public, steps))
