"""Held-out loss from chunked logits of the scored positions equals the full-logit loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedllm.data import IGNORE_INDEX, Example, collate
from fedllm.eval import evaluate as evaluation
from fedllm.eval.evaluate import aligned_targets, evaluate, hidden_states_out
from fedllm.model.methods import get_method
from tests.unit.test_method_kinds import SMALL, perturb, tiny

KINDS = ["full", "lora", "prompt", "prefix", "ptuning", "ia3", "adapter"]


def examples() -> list[Example]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for length in (9, 4, 12, 7, 1, 10):
        ids = torch.randint(3, 200, (length,), generator=gen).tolist()
        labels = [t if i % 3 else IGNORE_INDEX for i, t in enumerate(ids)]
        out.append(Example(ids, labels))
    return out


def full_logit_loss(model: torch.nn.Module, items: list[Example], batch_size: int) -> float:
    """The definition: cross-entropy over the model's full logits, batch by batch."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size], pad_id=2)
            labels = batch.pop("labels")
            logits = model(**batch).logits
            targets = aligned_targets(labels, logits.shape[1])
            flat = logits.reshape(-1, logits.shape[-1]).double()
            total += float(F.cross_entropy(flat, targets.reshape(-1), reduction="sum"))
    return total


def applied(kind: str, **settings: object) -> torch.nn.Module:
    cfg = SMALL.model_copy(update={"kind": kind, **settings})
    torch.manual_seed(0)
    model = tiny() if kind == "full" else get_method(kind).apply(tiny(), cfg)
    perturb(model, scale=0.3)
    return model


@pytest.mark.parametrize("kind", [*KINDS, "lora-on-head"])
def test_chunked_loss_equals_the_full_logit_loss(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "lora-on-head":
        model = applied("lora", target_modules=["q_proj", "lm_head"])
    else:
        model = applied(kind)
    monkeypatch.setattr(evaluation, "LOSS_ROWS", 4)  # several chunks per batch
    items = examples()
    want = full_logit_loss(model, items, batch_size=4)
    got = evaluate(model, items, batch_size=4, pad_id=2)
    assert got.tokens == sum(t != IGNORE_INDEX for e in items for t in e.labels[1:])
    assert got.loss_sum == pytest.approx(want, rel=1e-6)
    logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits  # the head is back
    assert logits.shape[-1] == model.get_output_embeddings().out_features


def test_bf16_chunked_loss_stays_close_to_fp32() -> None:
    model = applied("lora")
    items = examples()
    fp32 = evaluate(model, items, batch_size=4, pad_id=2)
    bf16 = evaluate(model, items, batch_size=4, pad_id=2, bf16=True)
    assert bf16.loss == pytest.approx(fp32.loss, rel=2e-2)


def test_an_instance_level_forward_is_restored() -> None:
    model = tiny()
    head = model.get_output_embeddings()
    calls: list[int] = []
    real = head.forward

    def hooked(hidden: torch.Tensor) -> torch.Tensor:  # what accelerate's hooks install
        calls.append(1)
        return real(hidden)

    head.forward = hooked
    with hidden_states_out(model) as project:
        assert project is hooked
        assert model(input_ids=torch.tensor([[5, 6]])).logits.shape[-1] == 64  # hidden size
    assert head.forward is hooked


@pytest.mark.parametrize("key", ["final_logit_softcapping", "logit_scale"])
def test_models_that_rescale_their_logits_are_scored_from_full_logits(key: str) -> None:
    model = tiny()
    setattr(model.config, key, 30.0)
    with hidden_states_out(model) as project:
        assert project is None
        assert model(input_ids=torch.tensor([[5, 6]])).logits.shape[-1] > 64
