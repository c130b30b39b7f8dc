"""Whole runs with CKKS aggregation on the simulator: FedAvg's model within the stated
error (the decrypting client's flooding noise, both weightings), a dropout, a decrypting
client that drops, ciphertext costs and the noise in the record, and the refusals at
config load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedllm.config import ConfigError
from fedllm.federation.runner import run
from tests.support.runs import tiny_config

FOUR = ("server.clients_per_round=4", "server.rounds=1")


def final_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "adapter_model.safetensors")


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_encrypted_and_plain_aggregation_give_the_same_model(
    tmp_path: Path, weighting: str
) -> None:
    setting = f"server.weighting='{weighting}'"
    plain = run(tiny_config(*FOUR, setting), tmp_path / "plain")
    encrypted = run(tiny_config(*FOUR, setting, "he.enabled=true"), tmp_path / "he")
    record = encrypted.records[-1]
    costs = record["he"]
    assert costs["clients"] == 4 and costs["decrypted_by"] in record["accepted"]
    assert costs["ciphertext_bytes_per_client"] > 10 * costs["plaintext_bytes_per_client"]
    metrics = record["client_metrics"]
    sizes = [m["he/ciphertext_bytes"] for m in metrics.values()]
    # SEAL compresses its serialization: sizes differ a little with the values
    assert max(sizes) == costs["ciphertext_bytes_per_client"] and min(sizes) > 0.95 * max(sizes)
    # the decrypting client flooded the sum (he.flooding_bits = 20, 1 round = 1
    # decryption, a cohort of 4): OpenFHE's sigma = sqrt(12 tau) 2^(s/2) t per ring
    # coefficient, t = 8 stds of a coefficient's error, per value times sqrt(N/2)/scale
    n, scale = 8192, 2.0**40
    t = 8 * math.sqrt(4 * (2 + 2 * n / 3) / 12)
    sigma = math.sqrt(12) * 2**10 * t * math.sqrt(n / 2) / scale
    assert costs["flooding_bits"] == 20
    assert costs["flooding_std"] == pytest.approx(sigma)  # 7.05e-5 per value of the sum
    stated = costs["mean_error_std"]  # per value of the mean (CKKS's ~1e-9 included)
    if weighting == "uniform":
        assert stated == pytest.approx(sigma / 4, rel=1e-6)
    else:  # the sum is of updates times example counts, the mean divides by their total
        assert stated < sigma / 40
    a, b = final_adapter(plain.run_dir), final_adapter(encrypted.run_dir)
    diff = torch.cat([(b[k].double() - a[k].double()).flatten() for k in a])
    # FedAvg steps by the mean: the models differ by the mean's error, which is the
    # flooding noise at the stated std (1792 entries: the std's sampling error ~1.7%)
    assert diff.std().item() == pytest.approx(stated, rel=0.12)
    assert abs(diff.mean().item()) < 5 * stated / math.sqrt(diff.numel())
    assert diff.abs().max().item() < 6 * stated
    # the clients' losses stay with them (issue 25, point 4): the plain run has one
    assert record["train_loss"] is None and plain.records[-1]["train_loss"] is not None


def test_a_client_that_drops_is_left_out_of_the_encrypted_sum(tmp_path: Path) -> None:
    config = tiny_config(*FOUR, "he.enabled=true", "server.dropout_trace={'1' = ['trivia']}")
    record = run(config, tmp_path / "run").records[-1]
    assert record["skipped"] is None and "trivia" not in record["accepted"]
    assert record["he"]["clients"] == 3


def test_a_decrypting_client_that_drops_leaves_the_model_unchanged(tmp_path: Path) -> None:
    # the decrypting client is the first accepted in id order: 'coding'
    config = tiny_config(
        *FOUR,
        "he.enabled=true",
        "server.dropout_trace={'1' = ['coding']}",
        "server.dropout_phases=['he/decrypt']",
    )
    result = run(config, tmp_path / "run")
    record = result.records[-1]
    assert "the decrypting client coding sent no sum" in record["skipped"]
    assert "global model unchanged" in record["skipped"]
    assert not result.changed_model


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            ("secagg.enabled=true", "server.weighting='uniform'", "server.clients_per_round=4"),
            "choose secure aggregation or CKKS",
        ),
        (("runtime.engine='flower'",), "needs he.public_context and he.secret_context"),
        (("client.drift_correction='scaffold'",), "control variates"),
        (
            (
                "privacy.dp='central'",
                "privacy.clip_norm=0.1",
                "privacy.noise_multiplier=1.0",
                "server.weighting='uniform'",
            ),
            "the decrypting client would see the cohort's clipped sum before",
        ),
    ],
)
def test_bad_homomorphic_settings_are_refused_at_load(
    overrides: tuple[str, ...], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        tiny_config("he.enabled=true", *overrides)
