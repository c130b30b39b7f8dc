"""Held-out metrics of a federation, gathered as an :data:`EVALUATE` phase on its engine.

Each client scores its own eval split and replies with sums
(:class:`~fedllm.client.evaluate.ClientEvaluator`), so on Flower the held-out text
stays on the nodes and a client's personal parts never reach the server. The test
split (and a public corpus's held-out part) is scored by the server when every
client has the same model, once; otherwise by each client, and the sums are added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from fedllm.client.evaluate import (
    AS_SENT,
    CLIENT,
    EVAL_LOSS,
    EVAL_TOKENS,
    EVALUATE,
    GLOBAL,
    PUBLIC_LOSS,
    PUBLIC_TOKENS,
    TEST_LOSS,
    TEST_TOKENS,
    ClientEvaluator,
    StateOf,
    evaluate_message,
    read_held_out,
)
from fedllm.composition import ModelView
from fedllm.eval.evaluate import HeldOut, summarize
from fedllm.federation.setup import Workspace
from fedllm.message import Dropped, Message
from fedllm.model.device import input_device, use_bf16
from fedllm.model.state import set_trainable_state
from fedllm.protocol.engine import Engine
from fedllm.runtime.simulation import SimulationEngine
from fedllm.server.sampling import draw_clients
from fedllm.types import ClientId, Params

MISSING = "eval_missing"
"""Metric: clients that did not answer the evaluation (present only when some did not)."""

SCORED = "eval_clients"
"""Metric: clients asked to score, when ``eval.clients`` samples fewer than all."""


def evaluate_states(
    ws: Workspace, state_of: Callable[[ClientId], Params], shared: bool
) -> dict[str, float]:
    """Each client's eval split under ``state_of(client)``, and the test split, in process.

    With a public corpus, its held-out part too (``public_loss``, ``public_ppl``),
    scored like the test split.

    Args:
        ws: the workspace (model and data).
        state_of: the trainable state each client's model has.
        shared: every client has the same state (a global model): the test split
            is scored once. Otherwise each client's model scores the test split
            and the token losses are summed over clients (a mean over clients).
    """
    assert ws.data is not None, "evaluation needs the workspace's data"
    engine = SimulationEngine(client_evaluator(ws).handle)
    clients = list(ws.data.clients)
    common = state_of(clients[0]) if shared else None
    return evaluate_federation(ws, engine, clients, 0, state_of, AS_SENT, common)


def client_evaluator(ws: Workspace, view: ModelView | None = None) -> ClientEvaluator:
    """The evaluating client side for the clients whose data ``ws`` holds.

    ``view`` composes a client's own model from the shared part (personal
    parameters); without one, clients score the state as sent.
    """
    data = ws.data
    cfg = ws.config
    public = ws.public.eval if ws.public is not None else []
    return ClientEvaluator(
        data.clients if data is not None else {},
        ws.model,
        cfg.eval.batch_size,
        ws.pad_id,
        use_bf16(cfg.client.bf16, input_device(ws.model)),
        data.test if data is not None else [],
        public,
        view_states(view),
    )


def view_states(view: ModelView | None) -> StateOf:
    """How a client builds the model it scores: through ``view`` for the ``client`` and
    ``global`` scopes, the sent arrays otherwise."""

    def state_of(client_id: ClientId, sent: Params, scope: str) -> Params:
        if view is not None and scope == CLIENT:
            return view.of_client(client_id, sent)
        if view is not None and scope == GLOBAL:
            return view.global_only(sent)
        if scope in (AS_SENT, CLIENT, GLOBAL):
            return sent
        raise ValueError(f"evaluation scope {scope!r}: expected one of {AS_SENT, CLIENT, GLOBAL}")

    return state_of


def evaluate_federation(
    ws: Workspace,
    engine: Engine,
    clients: Sequence[ClientId],
    round_num: int,
    sent: Callable[[ClientId], Params],
    scope: str,
    common: Params | None,
) -> dict[str, float]:
    """Ask ``clients`` to score their eval splits over ``engine``; the summary metrics.

    Args:
        ws: the server's workspace (its model scores the test split when ``common``).
        engine: carries the evaluate messages.
        clients: who may be scored, in order: all of them, or the seeded sample of
            ``eval.clients`` (the same one every round).
        round_num: the round whose model is scored (0: before training).
        sent: the state sent to each client (built when its message goes out).
        scope: which model a client composes from what it is sent.
        common: the model every client scores, if they all score the same one (the
            server scores the test split with it, once); None: each client scores the
            test split with its own model and the sums are added.
    """
    everyone = len(clients)
    clients = scored_clients(clients, ws.config.eval.clients, ws.config.seed)
    messages = _Lazy(clients, lambda c: evaluate_message(round_num, sent(c), scope, common is None))
    per_client: dict[ClientId, HeldOut] = {}
    test, public = HeldOut(0.0, 0), HeldOut(0.0, 0)
    missing = 0
    for client, reply in engine.exchange(EVALUATE, messages):
        if isinstance(reply, Dropped):
            missing += 1
            continue
        held = read_held_out(reply.metrics, EVAL_LOSS, EVAL_TOKENS)
        if held is None:
            missing += 1
            continue
        per_client[client] = held
        test = _add(test, read_held_out(reply.metrics, TEST_LOSS, TEST_TOKENS))
        public = _add(public, read_held_out(reply.metrics, PUBLIC_LOSS, PUBLIC_TOKENS))
    if common is not None:
        test, public = _score_on_server(ws, common)
    metrics = summarize(per_client, test if test.tokens else None)
    if public.tokens:
        metrics.update(public_loss=public.loss, public_ppl=public.perplexity)
    for client, held in per_client.items():
        metrics[f"client/{client}/loss"] = held.loss
    if missing:
        metrics[MISSING] = float(missing)
    if len(clients) < everyone:
        metrics[SCORED] = float(len(clients))
    return metrics


def scored_clients(clients: Sequence[ClientId], wanted: int | None, seed: int) -> list[ClientId]:
    """Every client, or a seeded sample of ``wanted`` (in client order, the same for the
    same list at every evaluation of a run)."""
    return list(clients) if wanted is None else draw_clients(clients, wanted, seed, "eval")


def _score_on_server(ws: Workspace, state: Params) -> tuple[HeldOut, HeldOut]:
    """The test split's and the public held-out part's sums under ``state``, here."""
    evaluator = client_evaluator(ws)
    if not evaluator.test and not evaluator.public:
        return HeldOut(0.0, 0), HeldOut(0.0, 0)
    set_trainable_state(ws.model, state)
    test = evaluator.score(evaluator.test) if evaluator.test else HeldOut(0.0, 0)
    public = evaluator.score(evaluator.public) if evaluator.public else HeldOut(0.0, 0)
    return test, public


def _add(total: HeldOut, more: HeldOut | None) -> HeldOut:
    if more is None:
        return total
    return HeldOut(total.loss_sum + more.loss_sum, total.tokens + more.tokens)


class _Lazy(Mapping[ClientId, Message]):
    """Messages built when the engine takes them, so a phase over many clients holds
    one client's state at a time on an engine that sends them one by one."""

    def __init__(self, keys: Sequence[ClientId], build: Callable[[ClientId], Message]) -> None:
        self._keys = list(keys)
        self._known = set(self._keys)
        self._build = build

    def __getitem__(self, key: ClientId) -> Message:
        if key not in self._known:
            raise KeyError(key)
        return self._build(key)

    def __iter__(self) -> Iterator[ClientId]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
