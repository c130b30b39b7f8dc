"""FedAvg against independent computations on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedllm.client.store import ClientStateStore
from fedllm.composition import Composition
from fedllm.config import Config
from fedllm.data import ClientData, Example, FederatedData, collate
from fedllm.federation.modes import FederatedMode, Members, build_mode
from fedllm.federation.setup import Workspace, prepare
from fedllm.model.state import get_trainable_state, set_trainable_state
from fedllm.pipeline import build_pipeline
from tests.support.runs import tiny_config


def plain_full_batch_training(
    ws: Workspace, examples: list[Example], steps: int, lr: float
) -> dict[str, torch.Tensor]:
    """An ordinary torch loop: AdamW on the whole batch, written without fedllm's trainer."""
    set_trainable_state(ws.model, ws.initial)
    params = [p for p in ws.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batch = collate(examples, ws.pad_id)
    ws.model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        ws.model(**batch).loss.backward()
        optimizer.step()
    return get_trainable_state(ws.model)


def one_full_batch_client(*overrides: str) -> Config:
    """The tiny recipe with one client of 12 examples, trained full batch (so the order
    of examples cannot matter) with AdamW lr 0.01 and no clipping, sampled every round."""
    return tiny_config(
        "data.num_clients=1",
        "data.max_examples_per_client=12",
        "client.batch_size=64",
        "client.max_grad_norm=none",
        "client.lr=0.01",
        "server.clients_per_round=1",
        *overrides,
    )


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fedavg_one_client_one_round_equals_local_training(tmp_path: Path, method: str) -> None:
    cfg = one_full_batch_client(
        f'method.kind="{method}"', "client.local_steps=4", "server.rounds=1"
    )
    ws = prepare(cfg)
    assert ws.data is not None
    (client,) = ws.data.clients.values()
    mode = build_mode(ws, tmp_path)
    mode.play_round(1, None)
    federated = dict(mode.final_states())[""]
    local = plain_full_batch_training(ws, client.train, steps=4, lr=0.01)
    assert set(federated) == set(local)
    # Adam divides by sqrt(v): summation-order noise (~1e-7) on a near-zero
    # gradient can move one element by ~1e-5, so compare whole updates instead.
    assert relative_update_error(federated, local, ws.initial) < 1e-4
    assert any(not torch.equal(local[n], ws.initial[n]) for n in local), "training must move"


def relative_update_error(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> float:
    """||got - want|| / ||want - start|| over all tensors together."""
    diff = sum(float((got[n] - want[n]).double().pow(2).sum()) for n in want) ** 0.5
    step = sum(float((want[n] - start[n]).double().pow(2).sum()) for n in want) ** 0.5
    return diff / step


def equal_length_examples(n: int, seq_len: int, seed: int) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 5000, (n, seq_len), generator=g).tolist()
    return [Example(row, list(row)) for row in ids]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_one_step_fedsgd_equals_a_centralized_step_on_the_union(
    tmp_path: Path, method: str
) -> None:
    cfg = tiny_config(
        f'method.kind="{method}"',
        'client.optimizer="sgd"',
        "client.lr=0.5",
        "client.local_steps=1",
        "client.batch_size=64",
        "client.max_grad_norm=none",
        "server.clients_per_round=3",
        "server.rounds=1",
    )
    ws = prepare(cfg, with_data=False)
    sizes = {"a": 2, "b": 3, "c": 5}  # unequal: the mean must be weighted by examples
    clients = {
        cid: ClientData(cid, equal_length_examples(n, 16, seed=i), [])
        for i, (cid, n) in enumerate(sizes.items())
    }
    ws.data = FederatedData(clients, [])
    store = ClientStateStore(tmp_path / "clients")
    plain = Composition()  # FedAvg alone: no algorithm plug-ins
    members = Members.held(clients)
    mode = FederatedMode(ws, members, cfg.client, cfg.server, build_pipeline(cfg), plain, store)
    record = mode.play_round(1, None)
    assert record.accepted == ["a", "b", "c"]

    union = [ex for c in clients.values() for ex in c.train]
    set_trainable_state(ws.model, ws.initial)
    names = [n for n, p in ws.model.named_parameters() if p.requires_grad]
    params = [p for p in ws.model.parameters() if p.requires_grad]
    ws.model.train()
    loss = ws.model(**collate(union, ws.pad_id)).loss
    grads = torch.autograd.grad(loss, params)
    expected = {n: ws.initial[n] - 0.5 * g for n, g in zip(names, grads, strict=True)}
    for name in names:
        torch.testing.assert_close(mode.state.params[name], expected[name], rtol=1e-4, atol=1e-6)


def test_fedprox_equals_training_with_the_proximal_term_in_the_loss(tmp_path: Path) -> None:
    mu, lr, steps = 0.5, 0.05, 3
    cfg = tiny_config(
        'client.optimizer="sgd"',
        f"client.lr={lr}",
        f"client.local_steps={steps}",
        f"client.prox_mu={mu}",
        "client.batch_size=64",
        "client.max_grad_norm=none",
        "data.num_clients=1",
        "data.max_examples_per_client=12",
        "server.clients_per_round=1",
    )
    ws = prepare(cfg)
    assert ws.data is not None
    (client,) = ws.data.clients.values()
    mode = build_mode(ws, tmp_path / "with")
    mode.play_round(1, None)
    fedprox = dict(mode.final_states())[""]

    set_trainable_state(ws.model, ws.initial)
    names = [n for n, p in ws.model.named_parameters() if p.requires_grad]
    params = [p for p in ws.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    batch = collate(client.train, ws.pad_id)
    ws.model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        prox = sum(((p - ws.initial[n]) ** 2).sum() for n, p in zip(names, params, strict=True))
        (ws.model(**batch).loss + mu / 2 * prox).backward()
        optimizer.step()
    reference = get_trainable_state(ws.model)
    assert relative_update_error(fedprox, reference, ws.initial) < 1e-4

    without = build_mode(
        prepare(cfg.model_copy(update={"client": cfg.client.model_copy(update={"prox_mu": 0.0})})),
        tmp_path / "without",
    )
    without.play_round(1, None)
    plain = dict(without.final_states())[""]
    assert relative_update_error(plain, reference, ws.initial) > 1e-3, "mu must matter"


@pytest.mark.parametrize("keep", [True, False])
def test_kept_optimizer_state_makes_rounds_one_continuous_training(
    tmp_path: Path, keep: bool
) -> None:
    """One client, server lr 1: with its AdamW state kept, 2 rounds of 2 steps are
    the same 4 steps a plain loop takes; with a fresh AdamW each round they are not."""
    cfg = one_full_batch_client(
        "client.local_steps=2",
        f"client.keep_optimizer_state={str(keep).lower()}",
        "server.rounds=2",
    )
    ws = prepare(cfg)
    assert ws.data is not None
    (client,) = ws.data.clients.values()
    mode = build_mode(ws, tmp_path)
    mode.play_round(1, None)
    mode.play_round(2, None)
    federated = dict(mode.final_states())[""]
    continuous = plain_full_batch_training(ws, client.train, steps=4, lr=0.01)
    error = relative_update_error(federated, continuous, ws.initial)
    if keep:
        assert error < 1e-4
        assert (tmp_path / "clients" / "optimizer" / f"{client.client_id}.safetensors").is_file()
    else:
        assert error > 1e-2  # a fresh AdamW restarts its bias correction and moments
