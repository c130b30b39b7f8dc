"""Centered clipping (Karimireddy, He and Jaggi 2021, "Learning from History for
Byzantine Robust Optimization", ICML).

``v_{l+1} = v_l + 1/n * sum_i (x_i - v_l) * min(1, tau / ||x_i - v_l||)`` for ``l = 0
.. L - 1``: each update's pull on ``v`` is clipped to ``tau``. The paper starts each
round from the previous round's aggregate, ``v_0 = v_L`` of round ``t - 1`` (the
history it learns from), and its momentum starts at 0: the authors' code
(``epfml/byzantine-robust-optimizer``, ``codes/aggregator/clipping.py``) keeps ``v``
across calls and sets it to zero on the first.

fedllm: ``x_i`` is client ``i``'s flattened full update (all its tensors concatenated;
LoRA's ``A`` and ``B`` as coordinates, not the product ``B A``), and the ``1/n`` mean
is weighted by the client weights (``server.weighting = "uniform"``: the paper's).
``start`` picks ``v_0``:

- ``"previous"`` (the default, the paper's rule): the result this rule produced in the
  last round it aggregated, in update units (the rule's own output, before the server
  optimizer or FedNova's rescaling steps on it; float32, or float64 when the broadcast
  holds float64). Zero in round 1, and until the rule has produced a result (every
  round so far skipped): the paper's momentum starts at 0. A round whose cohort differs
  starts from it all the same; a round that does not reach the rule (too few accepted
  updates, every update screened out) or whose result is not finite (the model is then
  left unchanged) keeps it. The centre is checkpointed with the server (group
  ``centered_clip``), so a resumed run continues bit for bit; memory: one update.
- ``"median"``: the coordinate-wise median of the round's updates (robust for fewer
  than half Byzantine; no state across rounds). Not the mean: far outliers would move
  it, and each step recovers at most ``tau``.
- ``"zero"``: zero every round (the result then moves at most ``L * tau`` from zero).

Each round records the ``start`` used (``"zero"`` for ``"previous"`` without a centre)
and, from a previous result, the round it was made in (``from_round``). Not done: the
paper's worker momentum (clients send their local deltas, not momenta). Excludes no
client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from fedllm.components import AGGREGATORS, ALGORITHMS
from fedllm.composition import AlgorithmSetup
from fedllm.security.defenses.round_rule import RoundRule, RoundRuleAlgorithm
from fedllm.settings import Section

if TYPE_CHECKING:  # torch is imported when a round is aggregated
    import torch

    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params


class CenteredClipSettings(Section):
    """``[aggregator.centered_clip]``."""

    tau: float = Field(
        1.0,
        gt=0,
        description="Clip radius: the largest L2 pull one update has on each step (update units).",
    )
    iterations: int = Field(3, ge=1, description="L: clipping steps.")
    start: Literal["previous", "median", "zero"] = Field(
        "previous",
        description="v_0: the 'previous' round's result (the paper's; zero in round 1 and "
        "until the rule has produced one; checkpointed), the coordinate-wise 'median' of "
        "the round's updates, or 'zero'.",
    )


def centered_clip(
    rows: torch.Tensor, weights: torch.Tensor, tau: float, iterations: int, start: torch.Tensor
) -> torch.Tensor:
    """``v_L`` over the rows from ``v_0 = start``, each step's mean weighted by ``weights``."""
    import torch

    from fedllm.security.defenses.flat import norms, weighted_mean

    v = start.to(rows.dtype)
    for _ in range(iterations):
        gaps = rows - v
        distance = norms(gaps)
        keep = torch.where(distance > tau, tau / distance, 1.0)
        v = v + weighted_mean(gaps * keep.to(rows.dtype)[:, None], weights)
    return v


@AGGREGATORS.register("centered_clip")
class CenteredClip(RoundRule):
    """``server.aggregator = "centered_clip"``: ``iterations`` steps of centered
    clipping with radius ``tau``, from ``start``.

    Attributes:
        centre: the result of the last round it aggregated (``start = "previous"``; None
            before the first).
        centre_round: the round that result was made in (0: none, or not told).
    """

    name = "centered_clip"
    settings = CenteredClipSettings

    def __init__(self, settings: CenteredClipSettings | None = None) -> None:
        super().__init__()
        self.chosen = settings or CenteredClipSettings()
        self.centre: torch.Tensor | None = None
        self.centre_round = 0

    def starting_point(self, rows: torch.Tensor) -> torch.Tensor:
        """``v_0`` for this round's ``rows``; :attr:`last` records which it is.

        Raises:
            ValueError: the previous result has another length than these updates.
        """
        import torch

        from fedllm.security.defenses.flat import coordinate_median

        if self.chosen.start == "median":
            self.last = {"start": "median"}
            return coordinate_median(rows)
        if self.chosen.start == "previous" and self.centre is not None:
            if self.centre.shape != rows.shape[1:]:
                raise ValueError(
                    f"centered clipping's previous result has {self.centre.numel()} entries, "
                    f"this round's updates {rows.shape[1]}: the model's trainable state "
                    "changed shape"
                )
            self.last = {"start": "previous", "from_round": self.centre_round}
            return self.centre.to(rows.dtype)
        self.last = {"start": "zero"}
        return torch.zeros(rows.shape[1], dtype=rows.dtype)

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        import torch

        from fedllm.pipeline.stage import BatchResult
        from fedllm.security.defenses.flat import stack, unstack, weights_of

        rows = stack(updates, reference)
        weights = weights_of(updates)
        start = self.starting_point(rows)
        combined = centered_clip(rows, weights, self.chosen.tau, self.chosen.iterations, start)
        if self.chosen.start == "previous" and bool(torch.isfinite(combined).all()):
            # a copy: the returned tensors are views of ``combined``, which a later
            # step may change in place
            self.centre, self.centre_round = combined.clone(), self.round
        return BatchResult(unstack(combined, reference))

    def state(self) -> tuple[Params, dict[str, Any]]:
        if self.centre is None:
            return {}, {}
        return {"centre": self.centre}, {"round": self.centre_round}

    def restore(self, tensors: Params, meta: dict[str, Any]) -> None:
        self.centre = tensors.get("centre")
        self.centre_round = int(meta.get("round", 0))


@ALGORITHMS.register("centered_clip")
class CenteredClipHistory(RoundRuleAlgorithm):
    """Keeps centered clipping's previous result across rounds (checkpointed) and
    records each round's start."""

    rule_name = "centered_clip"

    def make(self, setup: AlgorithmSetup) -> RoundRule:
        return CenteredClip(setup.ws.config.aggregator_settings_of(self.rule_name))
