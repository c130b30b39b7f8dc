"""FoolsGold (Fung, Yoon and Beschastnikh 2020, "The Limitations of Federated Learning in
Sybil Settings", RAID), Algorithm 1.

Sybils pursuing one poisoning goal send updates more alike than honest clients' are.
Each client ``i`` has a history ``H_i``, the sum of all its updates so far. Each round,
for the clients of the round:

1. ``cs_ij = cos(H_i, H_j)``, ``v_i = max_j cs_ij``;
2. pardoning: ``cs_ij *= v_i / v_j`` where ``v_j > v_i`` (an honest client that looks like
   a sybil is let off by the less similar one);
3. ``alpha_i = 1 - max_j cs_ij``, clipped to ``[0, 1]``, then ``alpha /= max_j alpha_j``;
4. logit: ``alpha_i = kappa * (ln(alpha_i / (1 - alpha_i)) + 0.5)`` (1 taken as 0.99),
   clipped to ``[0, 1]``;
5. ``w_{t+1} = w_t + sum_i alpha_i * Delta_i``.

Edge cases as in the authors' code (``foolsgold.py``): the similarity matrix is
``cos - I``, so its row maxima include a 0 on the diagonal (``v_i >= 0``; fedllm sets
the diagonal to exactly 0, where rounding would leave ``-2e-16`` and a pardon would
divide by 0); when every ``alpha_i`` is 0 (all histories alike), every weight is 0.

fedllm: histories are flattened full updates (all tensors concatenated, float64; LoRA's
``A`` and ``B`` as coordinates, not ``B A``), one per client that ever sent one, kept
across rounds and checkpointed with the server (memory: one update per client seen).
Only the clients of the round are compared (the paper's simulation has every client in
every round). The aggregate is the paper's sum divided by the round's ``n``,
``sum_i alpha_i Delta_i / n``: fedllm's deltas are local models' displacements, whose
FedAvg is their mean, not their sum, so an all-honest round (``alpha = 1``) is the
uniform mean; a down-weighted client's share is removed, not handed to the others.
Client weights are not used (the paper's rule). The paper's optional feature importance
(on a classifier's output layer) is not done. Clients with weight 0 are ``excluded``;
every weight is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from fedllm.components import AGGREGATORS, ALGORITHMS
from fedllm.composition import AlgorithmSetup
from fedllm.security.defenses.round_rule import RoundRule, RoundRuleAlgorithm
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when a round is aggregated
    import torch

    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params


class FoolsGoldSettings(Section):
    """``[aggregator.foolsgold]``."""

    kappa: float = Field(
        1.0, gt=0, description="kappa: the logit's confidence (the authors' code: 1)."
    )


def foolsgold_weights(histories: torch.Tensor, kappa: float) -> torch.Tensor:
    """Algorithm 1's weights ``alpha`` (float64, ``[n]``) from the histories' rows."""
    import torch

    from fedllm.security.defenses.flat import cosine_similarities

    n = histories.shape[0]
    cs = cosine_similarities(histories).fill_diagonal_(0.0)  # cos - I, with cos(H_i, H_i) = 1
    v = cs.max(dim=1).values
    pardon = (v[:, None] < v[None, :]) & ~torch.eye(n, dtype=torch.bool)
    ratio = v[:, None] / torch.where(pardon, v[None, :], 1.0)
    cs = torch.where(pardon, cs * ratio, cs)
    alpha = (1 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = float(alpha.max())
    if top <= 0:
        return torch.zeros(n, dtype=torch.float64)
    alpha = alpha / top
    alpha = torch.where(alpha == 1, 0.99, alpha)
    logit = kappa * (torch.log(alpha / (1 - alpha)) + 0.5)  # alpha = 0: -inf, then 0
    return torch.nan_to_num(logit, nan=0.0, neginf=0.0, posinf=1.0).clamp(0.0, 1.0)


@AGGREGATORS.register("foolsgold")
class FoolsGold(RoundRule):
    """``server.aggregator = "foolsgold"``: each update weighted by how unlike the
    others its client's history is."""

    name = "foolsgold"
    settings = FoolsGoldSettings

    def __init__(self, settings: FoolsGoldSettings | None = None) -> None:
        super().__init__()
        self.kappa = (settings or FoolsGoldSettings()).kappa
        self.histories: Params = {}

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        import torch

        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import stack, unstack

        rows = stack(updates, reference)
        for update, row in zip(updates, rows, strict=True):
            held = self.histories.get(update.client_id)
            if held is not None and held.shape != row.shape:
                raise ValueError(
                    f"client {update.client_id!r}'s history has {held.numel()} entries, its "
                    f"update {row.numel()}: the model's trainable state changed shape"
                )
            self.histories[update.client_id] = row.double() + (0.0 if held is None else held)
        alpha = foolsgold_weights(
            torch.stack([self.histories[u.client_id] for u in updates]), self.kappa
        )
        combined = (alpha / len(updates)).to(rows.dtype) @ rows
        weights = {u.client_id: float(a) for u, a in zip(updates, alpha, strict=True)}
        self.last = {"weights": weights}
        excluded = [cid for cid, a in weights.items() if a <= 0]
        return BatchResult(unstack(combined, reference), excluded)

    def state(self) -> tuple[Params, dict[str, Any]]:
        return dict(self.histories), {"clients": sorted(self.histories)}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        self.histories = {cid: tensors[cid] for cid in meta.get("clients", [])}


@ALGORITHMS.register("foolsgold")
class FoolsGoldHistory(RoundRuleAlgorithm):
    """Keeps FoolsGold's client histories across rounds (checkpointed) and records each
    round's weights."""

    rule_name = "foolsgold"

    def make(self, setup: AlgorithmSetup) -> RoundRule:
        return FoolsGold(setup.ws.config.aggregator_settings_of(self.rule_name))
