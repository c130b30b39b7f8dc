"""Evaluate trainable states on the federation's held-out splits."""

from __future__ import annotations

from collections.abc import Callable

from fedllm.eval.evaluate import HeldOut, evaluate, summarize
from fedllm.federation.setup import Workspace
from fedllm.model.state import set_trainable_state
from fedllm.types import ClientId, Params


def evaluate_states(
    ws: Workspace, state_of: Callable[[ClientId], Params], shared: bool
) -> dict[str, float]:
    """Each client's eval split under the state ``state_of(client)``, and the test split.

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
    cfg = ws.config
    bf16 = cfg.client.bf16
    per_client: dict[str, HeldOut] = {}
    test_sum, test_tokens = 0.0, 0
    public = ws.public.eval if ws.public is not None else []
    public_sum, public_tokens = 0.0, 0
    for cid, client in ws.data.clients.items():
        set_trainable_state(ws.model, state_of(cid))
        per_client[cid] = evaluate(ws.model, client.eval, cfg.eval.batch_size, ws.pad_id, bf16)
        if ws.data.test and (not shared or not test_tokens):
            held = evaluate(ws.model, ws.data.test, cfg.eval.batch_size, ws.pad_id, bf16)
            test_sum += held.loss_sum
            test_tokens += held.tokens
        if public and (not shared or not public_tokens):
            held = evaluate(ws.model, public, cfg.eval.batch_size, ws.pad_id, bf16)
            public_sum += held.loss_sum
            public_tokens += held.tokens
    test = HeldOut(test_sum, test_tokens) if test_tokens else None
    metrics = summarize(per_client, test)
    if public_tokens:
        scored = HeldOut(public_sum, public_tokens)
        metrics.update(public_loss=scored.loss, public_ppl=scored.perplexity)
    for cid, held in per_client.items():
        metrics[f"client/{cid}/loss"] = held.loss
    return metrics
