"""A whole run with DP-SGD in every client: each client's own epsilon, the server's
bound, the budget's stop, an exact resume, and prompt tuning under it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm.federation.runner import resume, run
from fedllm.privacy.accountant import Mechanism, PrivacyAccountant
from tests.support.runs import InterruptAfter, stable, tiny_config

LOCAL = (
    "privacy.dp='local'",
    "privacy.clip_norm=1.0",
    "privacy.noise_multiplier=1.0",
    "run.checkpoint_every=1",
)


def test_clients_account_their_own_steps_and_the_run_stops_at_the_bound(tmp_path: Path) -> None:
    # tiny: 4 clients of 40 examples at most, lots of 4, 3 steps a round
    overrides = (*LOCAL, "privacy.target_epsilon=25", "server.rounds=8")
    whole = run(tiny_config(*overrides), tmp_path / "whole")
    trained = [r for r in whole.records if r["round"] > 0]
    assert len(trained) < 8 and "budget spent" in trained[-1]["stopped"]
    steps: dict[str, int] = {}
    sizes = {c: v["train"] for c, v in whole.summary["data"]["clients"].items()}
    for record in trained:
        for client in record["accepted"]:
            steps[client] = steps.get(client, 0) + 3
            reported = record["client_metrics"][client]["local_epsilon"]
            own = PrivacyAccountant(Mechanism(1.0, sizes[client], 4), 1e-5).epsilon(steps[client])
            assert reported == pytest.approx(own, rel=1e-9)
            assert reported <= record["epsilon"] + 1e-12  # the server's bound covers it
    assert whole.summary["privacy"]["epsilon"] <= 25
    assert whole.summary["privacy"]["level"] == "record"

    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptAfter(2))
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)


def test_prompt_tuning_trains_under_dp_sgd(tmp_path: Path) -> None:
    result = run(
        tiny_config(*LOCAL, "method.kind='prompt'", "server.rounds=1"), tmp_path / "prompt"
    )
    assert result.changed_model
    assert result.records[-1]["epsilon"] > 0
