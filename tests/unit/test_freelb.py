"""FreeLB against the authors' algorithm written out on the tiny model: the start, the
ascent and projection, and the parameter gradients averaged over the K passes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedllm.config import ConfigError
from fedllm.data import Example, collate
from fedllm.federation.setup import Workspace, prepare
from fedllm.security.freelb import FreeLB
from fedllm.security.freelb.client import FreeLBHook, same_randomness
from fedllm.security.freelb.perturb import ascend, example_norms, start_delta
from tests.support.runs import tiny_config


@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 6), st.floats(0.01, 2.0))
def test_the_start_is_zero_on_padding_and_within_sigma_over_sqrt_n(
    batch: int, length: int, hidden: int, sigma: float
) -> None:
    lengths = torch.randint(1, length + 1, (batch,), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    delta = start_delta(torch.Size((batch, length, hidden)), mask, sigma, torch.float32)
    assert bool((delta[mask == 0] == 0).all())
    bound = sigma / (lengths.float() * hidden).sqrt()
    assert bool((delta.abs() <= bound.view(-1, 1, 1) + 1e-7).all())
    assert start_delta(delta.shape, mask, 0.0, torch.float32).abs().sum() == 0


@given(st.integers(0, 2**31 - 1), st.floats(0.01, 3.0), st.floats(0.0, 2.0))
def test_ascent_is_a_normalised_step_then_a_projection(seed: int, alpha: float, eps: float) -> None:
    g = torch.Generator().manual_seed(seed)
    delta, grad = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    out = ascend(delta, grad, alpha, eps)
    for i in range(3):  # one example at a time, written out
        moved = delta[i] + alpha * grad[i] / grad[i].norm()
        if eps > 0 and moved.norm() > eps:
            moved = moved * (eps / moved.norm())
        torch.testing.assert_close(out[i], moved, rtol=1e-5, atol=1e-6)
    if eps > 0:
        assert bool((example_norms(out) <= eps * (1 + 1e-5)).all())


@pytest.fixture(scope="module")
def ws() -> Workspace:
    return prepare(tiny_config("model.dtype=float32"), with_data=False)


def batch_of(ws: Workspace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    examples = []
    for n in (9, 14, 6):
        ids = torch.randint(100, 5000, (n,), generator=g).tolist()
        examples.append(Example(ids, ids))
    batch = collate(examples, ws.pad_id)
    batch["labels"][:, 0] = -100
    return batch


def by_hand(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    k: int,
    alpha: float,
    eps: float,
    init: float,
) -> tuple[list[torch.Tensor], list[float], list[torch.Tensor]]:
    """The authors' FreeLB step (their run_glue_freelb.py) transcribed: parameter
    gradients averaged over the K passes, the losses, and the deltas used."""
    params = [p for p in model.parameters() if p.requires_grad]
    embed = model.get_input_embeddings()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    embeds_init = embed(ids)
    lengths = mask.sum(1)
    delta = torch.zeros_like(embeds_init).uniform_(-1, 1) * mask.unsqueeze(2)
    mag = init / torch.sqrt(lengths * embeds_init.size(-1))
    delta = (delta * mag.view(-1, 1, 1)).detach()
    total = [torch.zeros_like(p) for p in params]
    losses, deltas = [], []
    for step in range(k):
        delta.requires_grad_()
        deltas.append(delta.detach().clone())
        out = model(inputs_embeds=embed(ids) + delta, attention_mask=mask, labels=labels)
        grads = torch.autograd.grad(out.loss, [*params, delta])
        for acc, grad in zip(total, grads[:-1], strict=True):
            acc += grad / k
        losses.append(float(out.loss.detach()))
        if step == k - 1:
            break
        delta_grad = grads[-1]
        denorm = torch.norm(delta_grad.view(delta_grad.size(0), -1), dim=1).view(-1, 1, 1)
        delta = (delta + alpha * delta_grad / denorm.clamp(min=1e-8)).detach()
        norm = torch.norm(delta.view(delta.size(0), -1), p=2, dim=1)
        exceed = (norm > eps).to(delta)
        delta = (delta * (eps / norm * exceed + (1 - exceed)).view(-1, 1, 1)).detach()
    return total, losses, deltas


@pytest.mark.parametrize(("k", "alpha", "eps", "init"), [(3, 0.3, 0.2, 0.5), (2, 0.05, 1.0, 0.1)])
def test_gradients_are_the_mean_over_the_k_passes_of_the_authors_algorithm(
    ws: Workspace, k: int, alpha: float, eps: float, init: float
) -> None:
    model = ws.model
    params = [p for p in model.parameters() if p.requires_grad]
    batch = batch_of(ws)
    torch.manual_seed(11)
    expected, losses, deltas = by_hand(model, batch, k, alpha, eps, init)
    hook = FreeLBHook(model.get_input_embeddings(), k, alpha, eps, init)
    for p in params:
        p.grad = None
    torch.manual_seed(11)
    loss = hook.compute_gradients(batch, lambda b: model(**b).loss)
    assert loss == pytest.approx(sum(losses) / k, rel=1e-5)
    for p, want in zip(params, expected, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-7)
    assert len(hook.deltas) == k
    for mine, theirs in zip(hook.deltas, deltas, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-7)
    for delta in hook.deltas[1:]:
        norms = example_norms(delta)
        assert bool((norms <= eps * (1 + 1e-5)).all())
        if alpha > eps:  # the step leaves the ball: the projection puts it on the sphere
            torch.testing.assert_close(norms, torch.full_like(norms, eps), rtol=1e-5, atol=0)
    # the adversary raised the loss
    assert losses[-1] > losses[0]
    for p in params:
        p.grad = None


def test_micro_batches_divide_the_gradient(ws: Workspace) -> None:
    model = ws.model
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for accum in (1, 4):
        for p in params:
            p.grad = None
        torch.manual_seed(2)
        FreeLBHook(model.get_input_embeddings(), 2, 0.1, 0.5, 0.1, accum).compute_gradients(
            batch_of(ws), lambda b: model(**b).loss
        )
        grads.append([p.grad.clone() for p in params if p.grad is not None])
    for one, four in zip(*grads, strict=True):
        torch.testing.assert_close(four * 4, one, rtol=1e-5, atol=1e-8)
    for p in params:
        p.grad = None


def test_every_pass_draws_the_same_dropout_masks() -> None:
    rewind = same_randomness(torch.device("cpu"))
    first = torch.nn.functional.dropout(torch.ones(64), 0.5, training=True)
    rewind()
    second = torch.nn.functional.dropout(torch.ones(64), 0.5, training=True)
    assert torch.equal(first, second)


def test_freelb_is_off_by_default_and_refuses_dp_sgd_and_fp16() -> None:
    assert FreeLB().setting(tiny_config()) is None
    with pytest.raises(ConfigError, match="algorithm.freelb.steps = 2 cannot be combined with"):
        tiny_config(
            "algorithm.freelb.steps=2",
            "privacy.dp=local",
            "privacy.clip_norm=1.0",
            "privacy.noise_multiplier=1.0",
        )
    with pytest.raises(ConfigError, match="algorithm.freelb.step_size"):
        tiny_config("algorithm.freelb.steps=2", "algorithm.freelb.step_size=0")
    problem = FreeLB().problem(
        tiny_config("algorithm.freelb.steps=2", "client.bf16=false").model_copy(
            update={"client": tiny_config().client.model_copy(update={"fp16": True})}
        )
    )
    assert problem is not None and "client.fp16" in problem


def test_the_k_passes_of_a_micro_batch_draw_the_same_dropout(ws: Workspace) -> None:
    model = ws.model
    draws: list[torch.Tensor] = []

    def loss_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        draws.append(torch.rand(4))  # what a dropout layer would draw in this pass
        loss: torch.Tensor = model(**batch).loss
        return loss

    torch.manual_seed(5)
    FreeLBHook(model.get_input_embeddings(), 3, 0.1, 0.5, 0.1).compute_gradients(
        batch_of(ws), loss_of
    )
    assert len(draws) == 3 and all(torch.equal(d, draws[0]) for d in draws)
    assert not torch.equal(torch.rand(4), draws[0])  # the stream went on after them
    for p in model.parameters():
        p.grad = None
