"""Evaluation as a phase on the engine: each client scores its own data and sends sums.

Checked against a direct computation (``evaluate`` on each split, summed by hand),
and for what a distributed engine adds: clients that do not answer, a client whose
own model only it can build, phases routed to the right handler.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from fedllm.client.evaluate import AS_SENT, EVAL_TOKENS, EVALUATE, ClientEvaluator, evaluate_message
from fedllm.eval.evaluate import evaluate
from fedllm.federation.evaluation import MISSING, evaluate_federation, evaluate_states
from fedllm.federation.modes import FederatedMode, build_mode
from fedllm.federation.setup import Workspace, prepare
from fedllm.message import Dropped, Message, Reply
from fedllm.model.state import set_trainable_state
from fedllm.protocol.engine import by_phase
from fedllm.runtime.simulation import SimulationEngine
from fedllm.types import ClientId, Params
from tests.support.runs import tiny_config


@pytest.fixture(scope="module")
def ws() -> Workspace:
    return prepare(tiny_config("data.num_clients=3", "server.clients_per_round=3"))


def perturbed(state: Params, scale: float) -> Params:
    return {k: v + scale * (i + 1) * 1e-2 for i, (k, v) in enumerate(state.items())}


def direct(ws: Workspace, state: Params, examples: list) -> tuple[float, int]:  # type: ignore[type-arg]
    set_trainable_state(ws.model, state)
    held = evaluate(ws.model, examples, ws.config.eval.batch_size, ws.pad_id)
    return held.loss_sum, held.tokens


def test_per_client_states_match_a_direct_computation(ws: Workspace) -> None:
    assert ws.data is not None and ws.data.test
    clients = list(ws.data.clients)
    states = {c: perturbed(ws.initial, i) for i, c in enumerate(clients)}
    metrics = evaluate_states(ws, states.__getitem__, shared=False)
    test_sum, test_tokens = 0.0, 0
    for client in clients:
        loss_sum, tokens = direct(ws, states[client], ws.data.clients[client].eval)
        assert metrics[f"client/{client}/loss"] == pytest.approx(loss_sum / tokens, rel=1e-12)
        more_sum, more_tokens = direct(ws, states[client], ws.data.test)
        test_sum, test_tokens = test_sum + more_sum, test_tokens + more_tokens
    assert metrics["test_loss"] == pytest.approx(test_sum / test_tokens, rel=1e-12)
    losses = [metrics[f"client/{c}/loss"] for c in clients]
    assert metrics["clients_loss_mean"] == pytest.approx(sum(losses) / 3, rel=1e-12)
    assert metrics["clients_ppl_worst"] == pytest.approx(math.exp(max(losses)), rel=1e-12)
    assert MISSING not in metrics


def test_a_shared_model_scores_the_test_split_once_on_the_server(ws: Workspace) -> None:
    assert ws.data is not None
    asked: list[Message] = []
    evaluator = ClientEvaluator(ws.data.clients, ws.model, 8, ws.pad_id, test=ws.data.test)

    def handler(client: ClientId, phase: str, message: Message) -> Message:
        asked.append(message)
        return evaluator.handle(client, phase, message)

    state = perturbed(ws.initial, 1.0)
    clients = list(ws.data.clients)
    metrics = evaluate_federation(
        ws, SimulationEngine(handler), clients, 4, lambda _c: state, AS_SENT, state
    )
    assert all(m.round == 4 and not m.config["eval/with_test"] for m in asked)
    loss_sum, tokens = direct(ws, state, ws.data.test)
    assert metrics["test_loss"] == pytest.approx(loss_sum / tokens, rel=1e-12)


class Silent:
    """An engine on which some clients never answer (as a dead Flower node)."""

    def __init__(self, handler: object, silent: set[str]) -> None:
        self.inner = SimulationEngine(handler)  # type: ignore[arg-type]
        self.silent = silent

    def exchange(
        self, phase: str, messages: Mapping[ClientId, Message]
    ) -> Iterator[tuple[ClientId, Reply]]:
        for client, reply in self.inner.exchange(phase, messages):
            yield client, Dropped("no reply") if client in self.silent else reply


def test_clients_that_do_not_answer_are_counted_and_left_out(ws: Workspace) -> None:
    assert ws.data is not None
    clients = list(ws.data.clients)
    evaluator = ClientEvaluator(ws.data.clients, ws.model, 8, ws.pad_id)
    engine = Silent(evaluator.handle, {clients[0]})
    state = ws.initial
    metrics = evaluate_federation(ws, engine, clients, 1, lambda _c: state, AS_SENT, state)
    assert metrics[MISSING] == 1.0
    assert f"client/{clients[0]}/loss" not in metrics
    rest = [metrics[f"client/{c}/loss"] for c in clients[1:]]
    assert metrics["clients_loss_mean"] == pytest.approx(sum(rest) / 2, rel=1e-12)


def test_the_evaluator_refuses_other_phases_and_unknown_clients(ws: Workspace) -> None:
    assert ws.data is not None
    evaluator = ClientEvaluator(ws.data.clients, ws.model, 8, ws.pad_id)
    message = evaluate_message(1, ws.initial, AS_SENT, False)
    with pytest.raises(ValueError, match="answers phase 'evaluate'"):
        evaluator.handle(next(iter(ws.data.clients)), "train", message)
    with pytest.raises(KeyError, match="nobody"):
        evaluator.handle("nobody", EVALUATE, message)
    reply = evaluator.handle(next(iter(ws.data.clients)), EVALUATE, message)
    assert reply.metrics[EVAL_TOKENS] > 0 and not reply.arrays


def test_phases_reach_their_own_handler() -> None:
    def answer(tag: str):  # type: ignore[no-untyped-def]
        return lambda client, phase, message: Message(config={"by": tag, "client": client})

    handle = by_phase({"train": answer("t"), "evaluate": answer("e")})
    assert handle("a", "evaluate", Message()).config == {"by": "e", "client": "a"}
    assert handle("b", "train", Message()).config == {"by": "t", "client": "b"}
    with pytest.raises(ValueError, match="no client handler for phase 'unmask'"):
        handle("a", "unmask", Message())


def test_a_server_without_the_clients_data_evaluates_through_its_engine(
    ws: Workspace, tmp_path: Path
) -> None:
    """A mode built for remote clients holds none of their data; the clients it reaches
    over its engine score themselves, and the numbers are the simulator's."""
    assert ws.data is not None
    local = build_mode(ws, tmp_path / "sim")
    sizes = {c: len(d.train) for c, d in ws.data.clients.items()}
    engine = local.engine  # stands in for the nodes: it holds the data

    def factory(handler: object, dropouts: object) -> object:
        return engine

    remote = build_mode(ws, tmp_path / "srv", factory, sizes)  # type: ignore[arg-type]
    assert isinstance(remote, FederatedMode) and not remote.clients
    assert remote.members.evaluated == list(ws.data.clients)
    assert remote.evaluate() == local.evaluate()


def test_eval_clients_scores_the_same_seeded_sample_every_round(tmp_path: Path) -> None:
    from fedllm.federation.evaluation import SCORED
    from fedllm.federation.runner import run
    from fedllm.report.progress import SilentReporter
    from fedllm.server.sampling import draw_clients

    config = tiny_config(
        "data.num_clients=6", "server.rounds=2", "client.local_steps=1", "eval.clients=2"
    )
    run(config, tmp_path / "run", reporter=SilentReporter())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    scored = [
        sorted(k.split("/")[1] for k in r["eval"] if k.startswith("client/")) for r in records
    ]
    assert len(records) == 3 and all(s == scored[0] for s in scored)  # rounds 0, 1, 2
    assert len(scored[0]) == 2 and all(r["eval"][SCORED] == 2.0 for r in records)
    data = prepare(config).data
    assert data is not None and len(data.clients) == 6
    assert scored[0] == draw_clients(sorted(data.clients), 2, config.seed, "eval")
