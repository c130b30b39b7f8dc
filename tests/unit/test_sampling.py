"""Client sampling strategies: uniform, size-weighted, availability trace."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedllm.aggregate.mean import WeightedMean
from fedllm.config import ConfigError, ServerConfig, parse_config
from fedllm.message import Message, Reply
from fedllm.pipeline.stage import Pipeline
from fedllm.protocol.fedavg import TrainingSetup, run_round
from fedllm.seeding import derive_seed
from fedllm.server.availability import BernoulliAvailability, read_trace
from fedllm.server.optimizer import FedAvg
from fedllm.server.sampling import build_sampler
from fedllm.server.state import ServerState
from fedllm.types import ClientId

SIZES = {"a": 1, "b": 3, "c": 6, "d": 10, "e": 0}
CLIENTS = list(SIZES)


def reference_uniform(
    clients: Sequence[ClientId], per_round: int, seed: int, round_num: int
) -> list[ClientId]:
    """The sampler as it was before ``server.sampling`` existed, copied verbatim."""
    if per_round >= len(clients):
        return list(clients)
    rng = np.random.default_rng(derive_seed(seed, "sample", round_num))
    chosen = set(rng.choice(len(clients), size=per_round, replace=False).tolist())
    return [cid for i, cid in enumerate(clients) if i in chosen]


def server(**fields: Any) -> ServerConfig:
    return ServerConfig(**fields)


def frequencies(cohorts: list[list[ClientId]]) -> dict[ClientId, float]:
    counts = Counter(cid for cohort in cohorts for cid in cohort)
    return {cid: counts[cid] / len(cohorts) for cid in CLIENTS}


def tolerance(p: float, n: int) -> float:
    """Five standard deviations of a frequency of ``n`` Bernoulli(p) trials."""
    return 5 * math.sqrt(p * (1 - p) / n)


def write_trace(path: Path, trace: object) -> Path:
    path.write_text(json.dumps(trace))
    return path


# ---------------------------------------------------------------- uniform


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.parametrize("per_round", [1, 2, 4, 5, 9])
def test_uniform_cohorts_equal_the_original_sampler(seed: int, per_round: int) -> None:
    sampler = build_sampler(server(clients_per_round=per_round), SIZES, seed)
    for r in range(1, 25):
        assert sampler.cohort(r) == reference_uniform(CLIENTS, per_round, seed, r)
        assert sampler.record_extra(r) == {}


# ---------------------------------------------------------------- size-weighted


def test_size_weighted_single_draws_follow_the_sizes() -> None:
    rounds = 4000
    sampler = build_sampler(server(sampling="size", clients_per_round=1), SIZES, seed=3)
    cohorts = [sampler.cohort(r) for r in range(1, rounds + 1)]
    assert all(len(c) == 1 for c in cohorts)
    total = sum(SIZES.values())
    for cid, freq in frequencies(cohorts).items():
        expected = SIZES[cid] / total
        assert abs(freq - expected) <= tolerance(expected, rounds), (cid, freq, expected)
    assert frequencies(cohorts)["e"] == 0.0  # no training examples: never drawn


def test_size_weighted_pairs_follow_successive_sampling() -> None:
    """With two per round, inclusion = P(first) + P(second), enumerated over ordered pairs."""
    rounds = 4000
    total = sum(SIZES.values())
    p = {cid: n / total for cid, n in SIZES.items()}
    expected = dict.fromkeys(CLIENTS, 0.0)
    for first, second in itertools.permutations([c for c in CLIENTS if p[c] > 0], 2):
        pair = p[first] * p[second] / (1 - p[first])
        expected[first] += pair
        expected[second] += pair
    assert sum(expected.values()) == pytest.approx(2.0)
    sampler = build_sampler(server(sampling="size", clients_per_round=2), SIZES, seed=5)
    cohorts = [sampler.cohort(r) for r in range(1, rounds + 1)]
    assert all(len(set(c)) == 2 for c in cohorts)
    for cid, freq in frequencies(cohorts).items():
        assert abs(freq - expected[cid]) <= tolerance(expected[cid], rounds), (cid, freq)


def test_size_weighted_takes_every_client_with_data_when_few() -> None:
    sampler = build_sampler(server(sampling="size", clients_per_round=4), SIZES, seed=0)
    assert sampler.cohort(1) == ["a", "b", "c", "d"]
    empty = build_sampler(server(sampling="size"), {"a": 0, "b": 0}, seed=0)
    assert empty.cohort(1) == []


def test_cohorts_are_in_client_order() -> None:
    for strategy in ("uniform", "size", "trace"):
        sampler = build_sampler(server(sampling=strategy, clients_per_round=3), SIZES, seed=2)
        for r in range(1, 30):
            cohort = sampler.cohort(r)
            assert cohort == sorted(cohort, key=CLIENTS.index)


# ---------------------------------------------------------------- trace


def test_trace_file_is_followed_exactly(tmp_path: Path) -> None:
    trace = {"1": ["a", "b", "c", "d", "e"], "2": ["c"], "3": [], "4": ["e", "a"], "9": ["b"]}
    path = write_trace(tmp_path / "trace.json", trace)
    cfg = server(sampling="trace", clients_per_round=2, rounds=4, availability_file=str(path))
    sampler = build_sampler(cfg, SIZES, seed=0)
    first = sampler.cohort(1)
    assert len(first) == 2 and set(first) <= set(trace["1"])
    assert sampler.cohort(2) == ["c"]
    assert sampler.cohort(3) == []
    assert sampler.cohort(4) == ["a", "e"]  # fewer online than per round: all, in client order
    assert sampler.cohort(9) == ["b"]  # rounds past the run may be listed (resume can extend)
    assert sampler.record_extra(4) == {"online": ["a", "e"]}
    assert sampler.record_extra(3) == {"online": []}
    with pytest.raises(ConfigError, match="no entry for round 5"):
        sampler.cohort(5)


def test_trace_draws_uniformly_among_the_online(tmp_path: Path) -> None:
    rounds = 3000
    online = ["a", "c", "d"]
    path = write_trace(tmp_path / "t.json", {str(r): online for r in range(1, rounds + 1)})
    cfg = server(sampling="trace", clients_per_round=1, rounds=rounds, availability_file=str(path))
    sampler = build_sampler(cfg, SIZES, seed=4)
    freq = frequencies([sampler.cohort(r) for r in range(1, rounds + 1)])
    for cid in CLIENTS:
        expected = 1 / 3 if cid in online else 0.0
        assert abs(freq[cid] - expected) <= tolerance(expected, rounds), (cid, freq[cid])


def test_everyone_always_online_gives_the_uniform_cohorts(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.json", {str(r): CLIENTS for r in range(1, 21)})
    from_file = server(sampling="trace", rounds=20, availability_file=str(path))
    synthetic = server(sampling="trace", availability=1.0)
    for cfg in (from_file, synthetic):
        sampler = build_sampler(cfg, SIZES, seed=9)
        assert [sampler.cohort(r) for r in range(1, 21)] == [
            reference_uniform(CLIENTS, 2, 9, r) for r in range(1, 21)
        ]


def test_synthetic_availability_rate_is_close_to_p() -> None:
    rounds, p = 2000, 0.3
    clients = [f"client-{i}" for i in range(10)]
    sizes = dict.fromkeys(clients, 5)
    sampler = build_sampler(
        server(sampling="trace", availability=p, clients_per_round=2), sizes, seed=1
    )
    online = {r: sampler.record_extra(r)["online"] for r in range(1, rounds + 1)}
    for cid in clients:
        rate = sum(cid in ids for ids in online.values()) / rounds
        assert abs(rate - p) <= tolerance(p, rounds), (cid, rate)
    overall = sum(len(ids) for ids in online.values()) / (rounds * len(clients))
    assert abs(overall - p) <= tolerance(p, rounds * len(clients))
    for r, ids in online.items():
        cohort = sampler.cohort(r)
        assert set(cohort) <= set(ids) and len(cohort) == min(2, len(ids))
    assert any(not ids for ids in online.values())  # P(nobody) = 0.7^10: ~56 rounds of 2000


def test_synthetic_availability_of_a_client_ignores_the_others() -> None:
    few = BernoulliAvailability(["a", "b", "c"], 0.5, seed=0)
    more = BernoulliAvailability(["z", "c", "a", "b", "y"], 0.5, seed=0)
    seen = []
    for r in range(1, 50):
        assert few.online(r) == [c for c in ["a", "b", "c"] if c in more.online(r)]
        seen.append(few.online(r))
    assert len({tuple(s) for s in seen}) > 2  # the rounds differ: the check is not vacuous


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("strategy", ["uniform", "size", "trace"])
def test_cohorts_are_a_pure_function_of_seed_and_round(strategy: str) -> None:
    extra = {"availability": 0.6} if strategy == "trace" else {}
    cfg = server(sampling=strategy, clients_per_round=2, **extra)
    forward = [build_sampler(cfg, SIZES, seed=11).cohort(r) for r in range(1, 31)]
    resumed = build_sampler(cfg, SIZES, seed=11)  # a fresh sampler asked in another order
    assert [resumed.cohort(r) for r in reversed(range(1, 31))][::-1] == forward
    other = [build_sampler(cfg, SIZES, seed=12).cohort(r) for r in range(1, 31)]
    assert other != forward


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"1": ["a"],', "is not valid JSON: .* at line 1"),
        ('[["a"]]', "expected a JSON object mapping rounds .* got an array"),
        ('{"first": ["a"], "2": [], "3": []}', "entry 'first' is not a round number"),
        ('{"0": ["a"], "1": [], "2": [], "3": []}', "entry '0' is not a round number"),
        ('{"1": ["a"], "01": ["b"], "2": [], "3": []}', "round 1 is listed twice"),
        ('{"1": "a", "2": [], "3": []}', "round '1': expected a list of client ids, got the str"),
        ('{"1": {"a": 1}, "2": [], "3": []}', "round '1': expected a list .* got an object"),
        ('{"1": ["a", 5], "2": [], "3": []}', "round '1', item 2: expected a client id string"),
        ('{"1": [], "2": ["bb"], "3": []}', "round '2', item 1: unknown client 'bb'"),
        ('{"1": [], "2": [], "3": ["a", "c", "a"]}', "item 3: client 'a' is listed twice"),
        ('{"1": [], "3": []}', r"no entry for round\(s\) 2 of server.rounds = 3"),
    ],
)
def test_bad_trace_files_are_refused_naming_file_and_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad-trace.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        read_trace(path, CLIENTS, rounds=3)
    assert "server.availability_file" in str(err.value) and "bad-trace.json" in str(err.value)


def test_unknown_client_lists_the_valid_ids(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.json", {"1": ["bb"]})
    with pytest.raises(ConfigError) as err:
        read_trace(path, CLIENTS, rounds=1)
    assert "valid client ids: a, b, c, d, e" in str(err.value)
    assert "did you mean 'b'?" in str(err.value)


def test_missing_trace_file_is_refused(tmp_path: Path) -> None:
    cfg = server(sampling="trace", availability_file=str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="nope.json'?: no such file"):
        build_sampler(cfg, SIZES, seed=0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"sampling": "random"},
            "server.sampling = 'random'.*'uniform', 'size', 'trace' or 'poisson'",
        ),
        ({"sampling": "trace", "availability": 0}, "server.availability = 0"),
        ({"sampling": "trace", "availability": 1.5}, "server.availability = 1.5"),
        (
            {"availability_file": "t.json"},
            "server.availability_file applies to server.sampling = 'trace', not 'uniform'",
        ),
        (
            {"sampling": "size", "availability": 0.5},
            "server.availability applies to server.sampling = 'trace', not 'size'",
        ),
        (
            {"sampling": "trace", "availability": 0.5, "availability_file": "t.json"},
            "both set; the file says who is online",
        ),
    ],
)
def test_bad_sampling_settings_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"server": fields})


# ---------------------------------------------------------------- empty cohort


class NoClients:
    """An engine that is never asked to train anyone."""

    def exchange(
        self, phase: str, messages: Mapping[ClientId, Message]
    ) -> Iterator[tuple[ClientId, Reply]]:
        assert not messages
        return iter([])


def test_an_empty_cohort_skips_the_round_with_a_clear_reason() -> None:
    params = {"w": torch.ones(3)}
    state = ServerState(0, {"w": params["w"].clone()}, {})
    setup = TrainingSetup(Pipeline([], WeightedMean()), FedAvg(server()), min_clients=1)
    record = run_round(state, [], NoClients(), setup)
    assert record.sampled == [] and record.accepted == []
    assert record.skipped is not None and "empty cohort" in record.skipped
    assert record.bytes_down == 0
    assert torch.equal(state.params["w"], params["w"]) and state.round == 1
