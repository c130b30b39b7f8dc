"""FLAME (Nguyen et al. 2022, "FLAME: Taming Backdoors in Federated Learning", USENIX
Security), Algorithm 1.

1. Filtering: ``c_ij = 1 - cos(W_i, W_j)`` between the ``n`` local models; HDBSCAN on
   these distances with ``min_cluster_size = n/2 + 1`` (and ``min_samples = 1``,
   ``allow_single_cluster``) admits the clients of the one cluster that size allows
   (more than half); the others (HDBSCAN's noise) are left out.
2. Clipping: ``S_t = median(e_1 .. e_n)``, ``e_i = ||W_i - G_t||`` over all ``n``
   clients; each admitted update is scaled by ``min(1, S_t / e_i)``.
3. Aggregation: ``G_{t+1}`` = the mean of the admitted clipped models.
4. Noising: ``G_{t+1} += N(0, (lambda * S_t)^2)`` on every coordinate.

fedllm: ``W_i = G_t + Delta_i`` flattened (every trainable tensor concatenated; LoRA's
``A`` and ``B`` as coordinates: the angles are those of the factors, not of ``B A``,
and the clip scales both factors' changes by one number). ``measure = "update"`` takes
the angles between the updates ``Delta_i`` instead: the broadcast, common to all, no
longer makes every local model look alike. ``n/2 + 1`` is ``floor(n/2) + 1``; with one
update there is nothing to cluster and it is admitted. The mean is uniform (the paper's;
client weights are not used). The noise is drawn from a generator seeded from the
round's seed (a rerun draws the same noise; under ``run.randomness = "secure"`` from the
OS CSPRNG instead, as privacy noise is), with ``lambda = noise`` (0.001 by default).
It is the paper's robustness device against what survives the clip, **not** a
differential-privacy guarantee: no accountant, no bound on a client's influence. The
clients not admitted are ``excluded``; each round's clip ``S_t`` and noise are recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedllm.components import AGGREGATORS, ALGORITHMS
from fedllm.composition import AlgorithmSetup
from fedllm.security.defenses.round_rule import RoundRule, RoundRuleAlgorithm
from fedllm.settings import Section

if TYPE_CHECKING:  # torch and scikit-learn are imported when a round is aggregated
    import torch

    from fedllm.pipeline.stage import BatchResult, WeightedUpdate
    from fedllm.types import Params


class FlameSettings(Section):
    """``[aggregator.flame]``."""

    noise: float = Field(
        0.001,
        ge=0,
        description="lambda: the noise's standard deviation as a multiple of the clip S_t "
        "(the median update norm); 0: no noise. A robustness device, not differential privacy.",
    )
    measure: Literal["model", "update"] = Field(
        "model",
        description="The cosine distances HDBSCAN clusters: between the local 'model's "
        "(the paper's) or between the 'update's.",
    )


def flame_admitted(distances: torch.Tensor) -> list[int]:
    """The clients HDBSCAN puts in a cluster of more than half of them (``[n, n]`` cosine
    distances), in order; all of one client."""
    import numpy as np
    from sklearn.cluster import HDBSCAN

    n = distances.shape[0]
    if n == 1:
        return [0]
    matrix = np.clip(distances.double().numpy(), 0.0, None)
    np.fill_diagonal(matrix, 0.0)
    clustering = HDBSCAN(
        min_cluster_size=n // 2 + 1,
        min_samples=1,
        metric="precomputed",
        allow_single_cluster=True,
        copy=True,
    )
    labels = clustering.fit_predict((matrix + matrix.T) / 2)
    return [i for i, label in enumerate(labels) if label >= 0]


def flame_combine(
    rows: torch.Tensor, admitted: Sequence[int], noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Steps 2 to 4 over the updates ``rows`` (``[n, d]``) of which ``admitted`` passed
    the filter: the noised mean of the clipped admitted updates, and ``S_t``. No
    admitted update: zero, before the noise."""
    import torch

    from fedllm.security.defenses.flat import coordinate_median, norms

    lengths = norms(rows)
    clip = float(coordinate_median(lengths[:, None])[0])  # even n: the two middle ones' mean
    combined = torch.zeros(rows.shape[1], dtype=torch.float64)
    if admitted:
        kept = lengths[list(admitted)]
        scale = torch.where(kept > clip, clip / kept.clamp(min=1e-300), 1.0)
        combined = (scale / len(admitted)) @ rows[list(admitted)].double()
    if noise > 0 and clip > 0:
        draw = torch.randn(rows.shape[1], dtype=torch.float64, generator=generator)
        combined = combined + noise * clip * draw
    return combined.to(rows.dtype), clip


@AGGREGATORS.register("flame")
class Flame(RoundRule):
    """``server.aggregator = "flame"``: HDBSCAN's majority cluster, clipped to the median
    norm, averaged, noised."""

    name = "flame"
    settings = FlameSettings

    def __init__(self, settings: FlameSettings | None = None, secure: bool = False) -> None:
        super().__init__()
        self.chosen = settings or FlameSettings()
        self.secure = secure

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        import torch

        from fedllm.pipeline.stage import BatchResult, WeightedUpdate
        from fedllm.security.defenses.flat import cosine_similarities, stack, unstack
        from fedllm.seeding import secret_seed

        rows = stack(updates, reference)
        points = rows
        if self.chosen.measure == "model":
            points = rows + stack([WeightedUpdate("", reference, 0.0)], reference)
        admitted = flame_admitted(1.0 - cosine_similarities(points))
        generator = torch.Generator().manual_seed(secret_seed() if self.secure else self.seed)
        combined, clip = flame_combine(rows, admitted, self.chosen.noise, generator)
        ids = [u.client_id for u in updates]
        excluded = [cid for i, cid in enumerate(ids) if i not in set(admitted)]
        self.last = {
            "admitted": [ids[i] for i in admitted],
            "clip": clip,
            "noise_std": self.chosen.noise * clip,
        }
        return BatchResult(unstack(combined, reference), excluded)


@ALGORITHMS.register("flame")
class FlameNoise(RoundRuleAlgorithm):
    """Seeds FLAME's noise from each round's seed and records its clip and noise."""

    rule_name = "flame"

    def make(self, setup: AlgorithmSetup) -> RoundRule:
        config = setup.ws.config
        return Flame(config.aggregator_settings_of(self.rule_name), config.secure_randomness)
