"""Canary rank and exposure on hand-made loss tables, candidate draws (siblings' secrets
left out), extrapolation."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from fedllm.data.build import FederatedData
from fedllm.data.canary import Canary, CanarySpec
from fedllm.privacy.audit import audit
from fedllm.privacy.audit.audit import Models
from fedllm.privacy.audit.exposure import (
    candidate_secrets,
    exposure_of,
    rank_among,
    secret_space,
)
from fedllm.privacy.audit.extract import Extraction


def test_exact_rank_and_exposure_on_a_hand_made_table() -> None:
    # a space of 10 secrets: the canary (loss 2.0) and 9 others
    others = [5.0, 1.0, 3.0, 2.0, 7.0, 8.0, 0.5, 9.0, 6.0]
    # lower: 1.0 and 0.5; tied: one 2.0 -> rank 1 + 2 + 0.5
    assert rank_among(2.0, others) == 3.5
    found = exposure_of(2.0, others, space=10, exact=True)
    assert found.rank == 3.5
    assert found.exposure == pytest.approx(math.log2(10) - math.log2(3.5))
    assert found.max_exposure == pytest.approx(math.log2(10))
    best = exposure_of(0.1, others, space=10, exact=True)
    assert best.rank == 1.0 and best.exposure == pytest.approx(math.log2(10))
    worst = exposure_of(99.0, others, space=10, exact=True)
    assert worst.rank == 10.0 and worst.exposure == pytest.approx(0.0)


def test_sampled_rank_scales_the_share_below_to_the_space() -> None:
    others = np.arange(100, dtype=float)  # 100 sampled of a space of 10^6
    found = exposure_of(9.5, others, space=10**6, exact=False)  # 10 of 100 below
    assert found.rank == pytest.approx(1 + 0.1 * (10**6 - 1))
    assert not found.exact and found.candidates == 100
    top = exposure_of(-1.0, others, space=10**6, exact=False)
    assert top.rank == 1.0 and top.exposure == pytest.approx(math.log2(10**6))


def test_exact_needs_the_whole_space() -> None:
    with pytest.raises(ValueError, match="all 9"):
        exposure_of(1.0, [2.0, 3.0], space=10, exact=True)
    with pytest.raises(ValueError, match="need 1 to 9"):
        exposure_of(1.0, [], space=10, exact=True)


def test_candidates_are_the_whole_space_when_it_is_small() -> None:
    rng = np.random.default_rng(0)
    others, exact = candidate_secrets("042", 1000, rng)
    assert exact and len(others) == 999 and "042" not in others
    assert set(others) | {"042"} == {f"{i:03d}" for i in range(1000)}


def test_sampled_candidates_are_distinct_padded_and_seeded() -> None:
    others, exact = candidate_secrets("000123", 500, np.random.default_rng(1))
    assert not exact and len(others) == 500 == len(set(others))
    assert "000123" not in others and all(len(s) == 6 and s.isdigit() for s in others)
    again, _ = candidate_secrets("000123", 500, np.random.default_rng(1))
    assert again == others


def test_extrapolation_matches_a_known_distribution() -> None:
    # candidates' losses from N(50, 5): a canary at 35 (3 sd below) has P = 0.00135,
    # an exposure of -log2(0.00135) = 9.53 bits, which the sample's rank cannot show
    losses = np.random.default_rng(2).normal(50.0, 5.0, size=4000)
    found = exposure_of(35.0, losses, space=10**9, exact=False)
    assert found.extrapolated is not None
    assert found.extrapolated == pytest.approx(-math.log2(0.0013499), abs=0.6)
    assert found.extrapolated <= found.max_exposure


# ---------------------------------------------------------------- sibling canaries


def test_siblings_secrets_are_neither_candidates_nor_in_the_space() -> None:
    siblings = ["42", "88", "17"]  # the canary's own among them changes nothing
    assert secret_space("17", siblings) == 98
    others, exact = candidate_secrets("17", 1000, np.random.default_rng(0), siblings)
    assert exact and len(others) == 97
    assert set(others) == {f"{i:02d}" for i in range(100)} - {"17", "42", "88"}


def test_sampled_candidates_skip_siblings_secrets() -> None:
    siblings = [f"{i:02d}" for i in range(0, 100, 3)]  # 34 secrets: every draw risks one
    own = "50"
    assert secret_space(own, siblings) == 66
    others, exact = candidate_secrets(own, 20, np.random.default_rng(3), siblings)
    assert not exact and len(others) == 20 == len(set(others))
    assert not set(others) & {own, *siblings}
    # without siblings the same draw does hit them: the exclusion is what removes them
    plain, _ = candidate_secrets(own, 20, np.random.default_rng(3))
    assert set(plain) & set(siblings)
    # the sampled rank scales to the 66 secrets the canary could have been
    found = exposure_of(1.0, [0.5, *[2.0] * 19], space=66, exact=False)
    assert found.rank == pytest.approx(1 + (1 / 20) * 65)


class _TableModels(Models):
    """No model: the losses come from a table (see ``_hand_made_losses``)."""

    def use(self, which: str) -> torch.nn.Module:
        return self.model


def test_better_scoring_siblings_do_not_depress_a_canarys_exposure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a hand-made loss table: two inserted canaries and a control share the template;
    # the model likes the siblings' secrets even more than canary-0's own, and every
    # other secret much less. canary-0 is the likeliest secret it could have been.
    spec = CanarySpec(2, 1, ("a",), "code {secret}", digits=2, controls=1, candidates=1000)
    canaries = [
        Canary("canary-0", "17", "code 17", "a", 1, "text"),
        Canary("canary-1", "42", "code 42", "a", 1, "text"),
        Canary("control-0", "88", "code 88", None, 0, "text"),
    ]
    table = {"17": 1.0, "42": 0.5, "88": 0.8}
    scored: list[list[str]] = []

    def losses(model: Any, texts: list[str], *_: Any) -> tuple[np.ndarray, None]:
        secrets = [t.removeprefix("code ") for t in texts]
        scored.append(secrets)
        return np.array([table.get(s, 3.0 + int(s) % 7 / 10) for s in secrets]), None

    monkeypatch.setattr(audit, "encode_texts", lambda texts, kind, tokenizer: list(texts))
    monkeypatch.setattr(audit, "example_losses", losses)
    monkeypatch.setattr(audit, "extract", lambda *a: Extraction("", "", False))
    models = _TableModels(torch.nn.Linear(1, 1), SimpleNamespace(pad_token_id=0), {}, {})
    empty = FederatedData(clients={}, test=[])
    report = audit.audit_run(models, empty, canaries, spec, audit.AuditOptions())
    first = report["canaries"][0]
    assert first["exact"] and first["space"] == 98 and first["candidates"] == 97
    assert first["rank"] == 1.0  # not 3: the siblings at 0.5 and 0.8 are not candidates
    assert first["exposure"] == pytest.approx(math.log2(98)) == first["max_exposure"]
    for canary, secrets in zip(canaries, scored, strict=True):
        assert secrets[0] == canary.secret
        assert not set(secrets[1:]) & {c.secret for c in canaries}
