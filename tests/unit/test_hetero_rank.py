"""Heterogeneous LoRA ranks: rank draws, truncated training, padding and per-rank means."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch

from fedllm.aggregate.mean import WeightedMean
from fedllm.algorithms.fedprox.client import ProxPlugin
from fedllm.algorithms.hetero_rank.client import RankPlugin
from fedllm.algorithms.hetero_rank.coverage import CoverageMean
from fedllm.algorithms.hetero_rank.plan import (
    RANK_METRIC,
    RankPlan,
    check_rank_clients,
    client_rank,
    compact,
)
from fedllm.algorithms.hetero_rank.server import RankExpansion
from fedllm.client.plugin import ClientPlugin
from fedllm.client.side import ClientSide
from fedllm.config import ClientConfig, ConfigError, MethodConfig, ModelConfig, parse_config
from fedllm.data import ClientData, Example
from fedllm.message import ROUND, Message, Reply
from fedllm.model.load import load_base_model
from fedllm.model.methods import get_method
from fedllm.model.state import get_trainable_state, set_trainable_state
from fedllm.pipeline.stage import Pipeline, PipelineError
from fedllm.protocol.fedavg import TrainingSetup, run_round
from fedllm.server.optimizer import build_server_optimizer
from fedllm.server.state import ServerState
from fedllm.types import ClientId, ClientUpdate, Params
from fedllm.wire import encode_message, payload_bytes

A = "m.lora_A.default.weight"  # [r, in] = [4, 3]
B = "m.lora_B.default.weight"  # [out, r] = [2, 4]


class Replay:
    """An engine that returns prepared updates (what clients would have sent)."""

    def __init__(self, updates: list[ClientUpdate]) -> None:
        self.updates = updates

    def exchange(
        self, phase: str, messages: Mapping[ClientId, Message]
    ) -> Iterator[tuple[ClientId, Reply]]:
        for update in self.updates:
            yield update.client_id, ClientSide.reply(update)


def sent(client: str, a: list[list[float]], b: list[list[float]], examples: int) -> ClientUpdate:
    delta = {A: torch.tensor(a), B: torch.tensor(b)}
    return ClientUpdate(client, delta, examples, {RANK_METRIC: float(len(a))})


def one_round(rank_aggregation: str, updates: list[ClientUpdate]) -> tuple[Params, Any]:
    """One FedAvg round from an all-ones global state; the new state and the record."""
    method = MethodConfig(
        r=4, ranks_by_client={"a": 2, "b": 4, "c": 2}, rank_aggregation=rank_aggregation
    )
    per_rank = rank_aggregation == "per_rank"
    aggregator = CoverageMean() if per_rank else WeightedMean()
    pipeline = Pipeline([], aggregator)
    optimizer = build_server_optimizer(parse_config({}).server)
    params = {A: torch.ones(4, 3), B: torch.ones(2, 4)}
    state = ServerState(0, params, optimizer.initial_state(params))
    expansion = RankExpansion(RankPlan(method, seed=0).rank_of, per_rank)
    cohort = [u.client_id for u in updates]
    setup = TrainingSetup(pipeline, optimizer, [expansion], 1)
    record = run_round(state, cohort, Replay(updates), setup)
    return state.params, record


# Client a trains rank 2 on 1 example, client b rank 4 on 3 examples.
A_A = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
A_B = [[8.0, 8.0, 8.0], [0.0, 4.0, 0.0], [2.0, 2.0, 2.0], [-4.0, 0.0, 4.0]]
B_A = [[2.0, -2.0], [6.0, 0.0]]
B_B = [[2.0, 2.0, 4.0, 8.0], [-2.0, 0.0, 0.0, 4.0]]
# Rows 0-1 of A and columns 0-1 of B are held by both: (1 * a + 3 * b) / 4.
# "pad": rows 2-3 / columns 2-3 are (1 * 0 + 3 * b) / 4; "per_rank": b's alone.
MEAN_A = {
    "pad": [[6.25, 6.5, 6.75], [1.0, 4.25, 1.5], [1.5, 1.5, 1.5], [-3.0, 0.0, 3.0]],
    "per_rank": [[6.25, 6.5, 6.75], [1.0, 4.25, 1.5], [2.0, 2.0, 2.0], [-4.0, 0.0, 4.0]],
}
MEAN_B = {
    "pad": [[2.0, 1.0, 3.0, 6.0], [0.0, 0.0, 0.0, 3.0]],
    "per_rank": [[2.0, 1.0, 4.0, 8.0], [0.0, 0.0, 0.0, 4.0]],
}


@pytest.mark.parametrize("mode", ["pad", "per_rank"])
def test_mixed_ranks_aggregate_to_hand_computed_values(mode: str) -> None:
    updates = [sent("a", A_A, B_A, 1), sent("b", A_B, B_B, 3)]
    up = sum(len(encode_message(ClientSide.reply(u))) for u in updates)
    params, record = one_round(mode, updates)
    assert record.accepted == ["a", "b"] and record.skipped is None
    assert record.bytes_up == up  # counted as sent: client a's rank-2 slices
    # FedAvg with server lr 1: the new state is the old (ones) plus the mean delta
    assert torch.equal(params[A], 1 + torch.tensor(MEAN_A[mode]))
    assert torch.equal(params[B], 1 + torch.tensor(MEAN_B[mode]))


@pytest.mark.parametrize("mode", ["pad", "per_rank"])
def test_a_slice_of_the_wrong_rank_is_refused_with_the_rank(mode: str) -> None:
    wrong = sent("c", A_B[:3], [row[:3] for row in B_B], 5)  # c trains rank 2, sends 3
    missing = ClientUpdate("a", {A: torch.tensor(A_A)}, 1)
    params, record = one_round(mode, [wrong, missing, sent("b", A_B, B_B, 3)])
    assert record.accepted == ["b"]
    reasons = {r["client"]: r["reason"] for r in record.rejected}
    assert "trains LoRA rank 2 of 4" in reasons["c"] and "[3, 3]" in reasons["c"]
    assert "missing" in reasons["a"]
    assert torch.equal(params[A], 1 + torch.tensor(A_B))  # b alone


def test_coverage_mean_with_full_coverage_is_the_weighted_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    updates = [{"x": torch.randn(3, 5, generator=gen)} for _ in range(3)]
    plain, covered = WeightedMean(), CoverageMean()
    plain.start(updates[0])
    covered.start(updates[0])
    for update, weight in zip(updates, [1.0, 2.5, 0.5], strict=True):
        plain.add(update, weight)
        covered.add_covered(update, weight, {})
    assert torch.allclose(covered.result()["x"], plain.result()["x"])


def test_coverage_mean_leaves_uncovered_entries_unchanged() -> None:
    covered = CoverageMean()
    covered.start({"x": torch.zeros(3)})
    covered.add_covered({"x": torch.tensor([2.0, 9.0, 9.0])}, 1.0, {"x": torch.tensor([1, 0, 0])})
    covered.add_covered({"x": torch.tensor([4.0, 6.0, 9.0])}, 3.0, {"x": torch.tensor([1, 1, 0])})
    assert covered.result()["x"].tolist() == [3.5, 6.0, 0.0]


def test_a_plain_mean_refuses_partial_updates() -> None:
    pipeline = Pipeline([], WeightedMean())
    pipeline.start({A: torch.zeros(4, 3)})
    with pytest.raises(PipelineError, match="takes whole updates"):
        pipeline.add(ClientUpdate("a", {A: torch.zeros(4, 3)}, 1), 1.0, {A: torch.ones(4, 1)})


# --- truncated training on the tiny model -------------------------------------------

R, ALPHA = 4, 8.0
TOKENS = torch.tensor([[1, 504, 1122, 4944, 253, 37, 2]])


LORA_INIT_SEED = 1
"""peft draws lora_A from the global RNG, whose start differs from process to process;
seeded so that every run checks the same model. (About one init in twelve, seed 0 among
them, has an AdamW entry with a near-zero gradient that the two computation orders move
apart by ~1e-5, past the tolerance below; the same with the code before the plug-in
refactor, which gives bit-identical updates from the same init.)"""


def tiny_lora(r: int, alpha: float) -> torch.nn.Module:
    base = load_base_model(ModelConfig(name="tiny"), seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(LORA_INIT_SEED)
        model: torch.nn.Module = get_method("lora").apply(
            base, MethodConfig(r=r, alpha=alpha, target_modules=["q_proj", "v_proj"])
        )
    return model


@pytest.fixture(scope="module")
def global_model() -> torch.nn.Module:
    return tiny_lora(R, ALPHA)


@pytest.fixture(scope="module")
def broadcast(global_model: torch.nn.Module) -> Params:
    """A trained-looking global state: every factor non-zero (B starts at zero)."""
    gen = torch.Generator().manual_seed(3)
    state = get_trainable_state(global_model)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}


def clients() -> dict[ClientId, ClientData]:
    gen = torch.Generator().manual_seed(1)
    examples = [
        Example(ids, ids) for ids in torch.randint(3, 2000, (8, 12), generator=gen).tolist()
    ]
    return {"low": ClientData("low", examples, []), "high": ClientData("high", examples, [])}


def client_side(model: torch.nn.Module, cfg: ClientConfig, plan: RankPlan | None) -> ClientSide:
    """The client side with the rank plug-in (given a plan) and FedProx (given a mu), in
    the order the algorithms compose in."""
    plugins: list[ClientPlugin] = []
    if plan is not None:
        plugins.append(RankPlugin(plan))
    if cfg.prox_mu > 0:
        plugins.append(ProxPlugin(cfg.prox_mu))
    return ClientSide(clients(), cfg, 0, 0, model, plugins)


def train(side: ClientSide, client_id: ClientId, broadcast: Params) -> ClientUpdate:
    """``client_id``'s update in round 1, trained from ``broadcast``."""
    return side.run(client_id, Message(arrays=broadcast, config={ROUND: 1}))


CLIENT_CFGS = {
    "adamw_decay": ClientConfig(local_steps=3, lr=1e-2, weight_decay=0.1),
    "sgd_prox": ClientConfig(local_steps=3, optimizer="sgd", lr=0.1, momentum=0.9, prox_mu=0.5),
}


@pytest.mark.parametrize("cfg_name", list(CLIENT_CFGS))
def test_a_low_rank_client_trains_and_sends_only_its_rank(
    global_model: torch.nn.Module, broadcast: Params, cfg_name: str
) -> None:
    cfg = CLIENT_CFGS[cfg_name]
    plan = RankPlan(MethodConfig(r=R, alpha=ALPHA, ranks_by_client={"low": 2}), seed=0)
    side = client_side(global_model, cfg, plan)

    low = train(side, "low", broadcast)
    trained = get_trainable_state(global_model)
    high = train(side, "high", broadcast)

    assert low.metrics[RANK_METRIC] == 2 and high.metrics[RANK_METRIC] == R
    for name, ref in broadcast.items():
        if ".lora_A." in name:
            assert low.delta[name].shape == (2, ref.shape[1])
            assert not bool(trained[name][2:].any())  # components >= 2 stayed exactly zero
            assert bool(low.delta[name].any())  # the rank-2 part did train
        else:
            assert low.delta[name].shape == (ref.shape[0], 2)
            assert not bool(trained[name][:, 2:].any())
        assert high.delta[name].shape == ref.shape
    assert payload_bytes(low.delta) < payload_bytes(high.delta)
    data_bytes = sum(t.numel() * 4 for t in low.delta.values())
    assert 2 * data_bytes == sum(t.numel() * 4 for t in high.delta.values())

    expanded = RankExpansion(plan.rank_of).expand(low, broadcast)
    assert isinstance(expanded, ClientUpdate)
    for name, tensor in expanded.delta.items():
        assert tensor.shape == broadcast[name].shape
        high_part = tensor[2:] if ".lora_A." in name else tensor[:, 2:]
        assert not bool(high_part.any())


def test_truncated_training_equals_a_real_rank_2_lora(
    global_model: torch.nn.Module, broadcast: Params
) -> None:
    """Rank 2 inside the rank-4 model, scale alpha / 4, is a peft LoRA of rank 2 with
    lora_alpha = alpha * 2 / 4 and the sliced weights: same output, same training."""
    cfg = CLIENT_CFGS["adamw_decay"]
    plan = RankPlan(MethodConfig(r=R, alpha=ALPHA, ranks_by_client={"low": 2}), seed=0)
    small = tiny_lora(2, ALPHA * 2 / R)
    sliced = compact(broadcast, 2)

    set_trainable_state(global_model, plan.start("low", broadcast))
    set_trainable_state(small, sliced)
    global_model.eval()
    small.eval()
    with torch.no_grad():
        truncated_out = global_model(input_ids=TOKENS).logits
        small_out = small(input_ids=TOKENS).logits
        set_trainable_state(global_model, broadcast)
        full_out = global_model(input_ids=TOKENS).logits
    assert torch.allclose(truncated_out, small_out, atol=1e-6)
    assert not torch.allclose(truncated_out, full_out, atol=1e-3)  # truncation matters

    low = train(client_side(global_model, cfg, plan), "low", broadcast)
    reference = train(client_side(small, cfg, None), "low", sliced)
    for name, delta in reference.delta.items():
        assert torch.allclose(low.delta[name], delta, atol=1e-6, rtol=1e-4)


# --- ranks and config ------------------------------------------------------------------


def test_ranks_are_fixed_per_client_and_cover_the_range() -> None:
    cfg = MethodConfig(r=6, rank_min=2, ranks_by_client={"vip": 1})
    draws = {f"c{i}": client_rank(cfg, f"c{i}", seed=0) for i in range(200)}
    assert set(draws.values()) == set(range(2, 7))
    assert all(client_rank(cfg, c, seed=0) == r for c, r in draws.items())
    assert client_rank(cfg, "vip", seed=0) == 1
    assert [client_rank(cfg, f"c{i}", seed=1) for i in range(200)] != list(draws.values())
    assert client_rank(MethodConfig(r=6), "x", seed=0) == 6


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"method": {"r": 4, "rank_min": 5}}, r"rank_min = 5 exceeds method.r = 4.*1 to 4"),
        ({"method": {"rank_min": 0}}, r"method.rank_min = 0"),
        ({"method": {"r": 4, "ranks_by_client": {"a": 5}}}, r"\{'a': 5\}.*1 to method.r = 4"),
        ({"method": {"ranks_by_client": {"a": 0}}}, r"\{'a': 0\}"),
        ({"method": {"kind": "full", "rank_min": 2}}, r"needs method.kind = 'lora', not 'full'"),
        ({"method": {"rank_aggregation": "mean"}}, r"method.rank_aggregation = 'mean'"),
        (
            {"method": {"rank_min": 2}, "client": {"drift_correction": "scaffold"}},
            r"cannot be combined with client.drift_correction = 'scaffold'",
        ),
        (
            {"method": {"rank_min": 2}, "personal": {"keys": ["*lora_B*"]}},
            r"cannot be combined with personal.keys",
        ),
        (
            {"method": {"ranks_by_client": {"a": 2}}, "federation": {"mode": "local"}},
            r"cannot be combined with federation.mode = 'local'",
        ),
        (
            {
                "method": {"rank_min": 2, "rank_aggregation": "per_rank"},
                "server": {"aggregator": "median"},
            },
            r"'per_rank' replaces the weighted mean, but server.aggregator = 'median'",
        ),
    ],
)
def test_bad_rank_settings_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_rank_settings_that_make_sense_load() -> None:
    config = parse_config({"method": {"r": 4, "rank_min": 4, "rank_aggregation": "per_rank"}})
    assert config.method.heterogeneous_ranks
    assert not parse_config({"method": {"rank_aggregation": "per_rank"}}).method.heterogeneous_ranks


def test_ranks_by_client_are_checked_against_the_federation() -> None:
    with pytest.raises(
        ConfigError, match=r"ranks_by_client names unknown client\(s\) \['zed'\].*alice"
    ):
        check_rank_clients(MethodConfig(ranks_by_client={"zed": 2}), ["alice", "bob"])
    check_rank_clients(MethodConfig(ranks_by_client={"bob": 2}), ["alice", "bob"])
