"""A whole DP-FedAvg run: epsilon in every record, a budget never exceeded (also across
resume), and FedAvg exactly without noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedllm.federation.runner import resume, run
from fedllm.privacy.accountant import Mechanism, PrivacyAccountant
from fedllm.report.progress import SilentReporter
from tests.support.runs import InterruptAfter, InterruptDuring, stable, tiny_config

DP = (
    "privacy.dp='central'",
    "privacy.clip_norm=0.05",
    "server.weighting='uniform'",
    "run.checkpoint_every=1",
)


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "adapter_model.safetensors")


def test_a_budget_stops_the_run_before_it_is_exceeded_and_resume_keeps_to_it(
    tmp_path: Path,
) -> None:
    accountant = PrivacyAccountant(Mechanism(1.0, 4, 2, "fixed"), 1e-5)
    target = (accountant.epsilon(3) + accountant.epsilon(4)) / 2  # allows exactly 3 rounds
    overrides = (*DP, "privacy.noise_multiplier=1.0", f"privacy.target_epsilon={target}")

    whole = run(tiny_config(*overrides, "server.rounds=6"), tmp_path / "whole")
    trained = [r for r in whole.records if r["round"] > 0]
    assert [r["round"] for r in trained] == [1, 2, 3]
    for r in trained:
        assert r["epsilon"] == pytest.approx(accountant.epsilon(r["round"]), rel=1e-9)
    assert "budget spent" in trained[-1]["stopped"]
    ledger = whole.summary["privacy"]
    assert ledger["epsilon"] <= target and ledger["rounds_charged"] == 3
    assert not ledger["noise_multiplier_derived"]

    with pytest.raises(KeyboardInterrupt):  # dies after round 2 (its checkpoint saved)
        run(
            tiny_config(*overrides, "server.rounds=6"), tmp_path / "cut", reporter=InterruptAfter(2)
        )
    resumed = resume(tmp_path / "cut")
    assert stable(resumed.records) == stable(whole.records)
    assert resumed.summary["privacy"] == ledger

    again = resume(tmp_path / "whole", ["server.rounds=9"])
    assert again.already_finished
    assert max(r["round"] for r in again.records) == 3


def test_a_derived_noise_is_kept_when_a_resumed_run_grows(tmp_path: Path) -> None:
    overrides = (*DP, "privacy.target_epsilon=20")
    with pytest.raises(KeyboardInterrupt):
        run(
            tiny_config(*overrides, "server.rounds=2"), tmp_path / "run", reporter=InterruptAfter(1)
        )
    grown = resume(tmp_path / "run", ["server.rounds=5"])
    ledger = grown.summary["privacy"]
    assert ledger["noise_multiplier_derived"]
    assert ledger["epsilon"] <= 20
    # the noise was derived for 2 rounds at 20: a third would overspend, so it stops at 2
    assert ledger["rounds_charged"] == 2
    assert "budget spent" in grown.records[-1]["stopped"]


def test_without_noise_and_a_clip_above_every_update_it_is_fedavg(tmp_path: Path) -> None:
    plain = run(tiny_config("server.weighting='uniform'"), tmp_path / "plain")
    dp = run(
        tiny_config(*DP[:-1], "privacy.clip_norm=1e6", "privacy.noise_multiplier=0"),
        tmp_path / "dp",
    )
    assert all(r["epsilon"] == float("inf") for r in dp.records if r["round"] > 0)
    a, b = final_adapter(plain.run_dir), final_adapter(dp.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert stable(plain.records[1]["eval"]) == stable(dp.records[1]["eval"])


def test_noise_moves_the_model_away_from_fedavg(tmp_path: Path) -> None:
    plain = run(tiny_config("server.weighting='uniform'", "server.rounds=1"), tmp_path / "a")
    noisy = run(
        tiny_config(
            *DP,
            "privacy.noise_multiplier=1.0",
            "server.rounds=1",
            "privacy.adaptive_clip=true",
            "privacy.clip_count_noise=1",
        ),
        tmp_path / "b",
    )
    a, b = final_adapter(plain.run_dir), final_adapter(noisy.run_dir)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert noisy.summary["privacy"]["update_noise_multiplier"] > 1.0


def test_secure_randomness_gives_two_runs_of_one_config_different_noise(tmp_path: Path) -> None:
    config = tiny_config(
        *DP, "privacy.noise_multiplier=0.5", "server.rounds=1", "run.randomness='secure'"
    )
    first, second = run(config, tmp_path / "a"), run(config, tmp_path / "b")
    a, b = final_adapter(tmp_path / "a"), final_adapter(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert first.summary["randomness"]["mode"] == "secure"
    assert "CSPRNG" in second.summary["randomness"]["meaning"]


def test_a_crash_after_the_stopping_round_s_checkpoint_does_not_play_past_the_budget(
    tmp_path: Path,
) -> None:
    """Dies after round 3's checkpoint and line, before the summary: the resumed run
    must see the spent budget before playing round 4 (issue 25, point 6)."""
    accountant = PrivacyAccountant(Mechanism(1.0, 4, 2, "fixed"), 1e-5)
    target = (accountant.epsilon(3) + accountant.epsilon(4)) / 2  # allows exactly 3 rounds
    overrides = (*DP, "privacy.noise_multiplier=1.0", f"privacy.target_epsilon={target}")
    with pytest.raises(KeyboardInterrupt):
        run(
            tiny_config(*overrides, "server.rounds=6"), tmp_path / "cut", reporter=InterruptAfter(3)
        )
    resumed = resume(tmp_path / "cut")
    assert max(r["round"] for r in resumed.records) == 3
    assert resumed.summary["privacy"]["rounds_charged"] == 3
    assert resumed.summary["privacy"]["epsilon"] <= target


def test_every_start_of_an_interrupted_secagg_round_is_charged(tmp_path: Path) -> None:
    """The server saw round 2's noisy sum (or may have) before each crash; every replay
    releases another: round 2 cut twice, then played: 3 rounds played, 5 charged."""
    overrides = (
        *DP,
        "privacy.noise_multiplier=2.0",
        "secagg.enabled=true",
        "data.num_clients=4",
        "server.clients_per_round=4",
        "server.min_clients=3",
        "server.rounds=3",
    )
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptDuring(2, replies=14))
    with pytest.raises(KeyboardInterrupt):  # the same round dies again
        resume(tmp_path / "cut", reporter=InterruptDuring(2, replies=6))
    resumed = resume(tmp_path / "cut")
    ledger = resumed.summary["privacy"]
    assert [r["round"] for r in resumed.records if r["round"] > 0] == [1, 2, 3]
    assert ledger["rounds_charged"] == 5 and ledger["replayed_rounds_charged"] == 2
    accountant = PrivacyAccountant(Mechanism(2.0, 4, 4, "fixed"), 1e-5)
    assert ledger["epsilon"] == pytest.approx(accountant.epsilon(5), rel=1e-9)
    assert resumed.records[-1]["epsilon"] == pytest.approx(accountant.epsilon(5), rel=1e-9)


def test_a_crash_before_any_checkpoint_is_charged_on_resume(tmp_path: Path) -> None:
    """Central DP, no SecAgg: round 1's broadcast may have gone out before the crash;
    the resumed run starts over from round 1 and charges that start."""
    overrides = (*DP, "privacy.noise_multiplier=2.0", "server.rounds=2")
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptDuring(1, replies=1))
    resumed = resume(tmp_path / "cut")
    ledger = resumed.summary["privacy"]
    assert [r["round"] for r in resumed.records if r["round"] > 0] == [1, 2]
    assert ledger["rounds_charged"] == 3 and ledger["replayed_rounds_charged"] == 1


def last_pipeline_state(run_dir: Path) -> dict[str, Any]:
    from fedllm.federation.checkpoint import list_checkpoints, load_checkpoint

    meta = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1]).meta
    return dict(meta["pipeline"])


@pytest.mark.parametrize(
    ("settings", "grown"),
    [
        (
            (
                "privacy.noise_multiplier=0.5",
                "privacy.adaptive_clip=true",
                "privacy.clip_count_noise=1.0",
            ),
            [],
        ),
        (("privacy.target_epsilon=60",), ["server.rounds=6"]),
    ],
    ids=["adaptive_clip", "derived_multiplier_rounds_grown"],
)
def test_resume_restores_the_stages_clip_and_multiplier(
    tmp_path: Path, settings: tuple[str, ...], grown: list[str]
) -> None:
    """Resume equals the uninterrupted run in the stages' own state, not only the
    ledger's: the adaptive clip moves on from where it was, and a multiplier derived for
    4 rounds stays the one used even when server.rounds grows (a multiplier derived
    again for 6 rounds would be smaller: the guarantee silently overstated)."""
    overrides = (*DP, *settings, "server.rounds=4")
    whole = run(tiny_config(*overrides), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(*overrides), tmp_path / "cut", reporter=InterruptAfter(2))
    resumed = resume(tmp_path / "cut", grown)
    assert [r["round"] for r in resumed.records][-1] == 4
    expected, got = last_pipeline_state(tmp_path / "whole"), last_pipeline_state(tmp_path / "cut")
    assert got == expected
    noise = expected["noise"]
    assert noise["multiplier"] == pytest.approx(whole.summary["privacy"]["update_noise_multiplier"])
    if "privacy.adaptive_clip=true" in settings:
        assert expected["clip"]["max_norm"] != pytest.approx(0.05)  # it moved
        # every line says where the clip went (fedllm report plots it)
        estimates = resumed.records[-1]["estimates"]
        assert estimates["clip.max_norm"] == pytest.approx(expected["clip"]["max_norm"])
    a, b = final_adapter(tmp_path / "whole"), final_adapter(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["privacy"]["epsilon"] == whole.summary["privacy"]["epsilon"]


def test_every_line_has_epsilon_and_the_planned_end_is_not_a_budget_stop(
    tmp_path: Path,
) -> None:
    """Round 0 says epsilon 0; a run whose derived noise spends its budget in exactly the
    planned rounds ends without a 'stopped' (issue 26)."""
    result = run(tiny_config(*DP, "privacy.target_epsilon=20", "server.rounds=2"), tmp_path / "r")
    assert result.records[0]["round"] == 0 and result.records[0]["epsilon"] == 0.0
    assert all("epsilon" in r for r in result.records)
    assert "stopped" not in result.records[-1]
    assert result.summary["privacy"]["level"] == "user"


def test_a_delta_of_one_over_the_clients_or_more_is_refused() -> None:
    from fedllm.privacy.accountant import PrivacyConfigError
    from fedllm.privacy.plan import plan_central, plan_local
    from fedllm.privacy.settings import PrivacyConfig

    central = PrivacyConfig(dp="central", clip_norm=0.1, noise_multiplier=1.0, delta=0.25)
    with pytest.raises(PrivacyConfigError, match=r"privacy.delta = 0.25 is not below 1 / 4"):
        plan_central(central, clients=4, cohort=2, sampling="fixed", rounds=3)
    plan_central(central, clients=3, cohort=2, sampling="fixed", rounds=3)  # 0.25 < 1/3
    local = PrivacyConfig(dp="local", clip_norm=1.0, noise_multiplier=1.0, delta=0.01)
    with pytest.raises(PrivacyConfigError, match=r"not below 1 / 100 \(training records"):
        plan_local(local, examples=100, lot=4, steps_per_round=2, rounds=2)


class Header(SilentReporter):
    """Keeps the start banner."""

    text = ""

    def start(self, first_round: int, rounds: int, header: str) -> None:
        Header.text = header


def test_the_banner_says_the_mechanism_its_accounting_and_randomness(tmp_path: Path) -> None:
    run(
        tiny_config(*DP, "privacy.target_epsilon=30", "server.rounds=1"),
        tmp_path / "r",
        reporter=Header(),
    )
    banner = Header.text
    assert "user-level DP-FedAvg" in banner and "randomness reproducible" in banner
    assert "(derived from the budget)" in banner and "delta 1e-05" in banner
    assert "2 of 4 clients per round (fixed size, replace-one neighbours" in banner
    run(
        tiny_config(
            *DP, "privacy.noise_multiplier=1.0", "server.sampling='poisson'", "server.rounds=1"
        ),
        tmp_path / "p",
        reporter=Header(),
    )
    assert "about 2 of 4 clients per round (Poisson, add-or-remove" in Header.text
