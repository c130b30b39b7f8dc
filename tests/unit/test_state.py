"""The exchanged state: get/set of the trainable parameters."""

from __future__ import annotations

import pytest
import torch

from fedllm.config import MethodConfig, ModelConfig
from fedllm.model.load import load_base_model
from fedllm.model.methods import get_method
from fedllm.model.state import (
    StateMismatchError,
    count_parameters,
    get_trainable_state,
    set_trainable_state,
    state_nbytes,
    trainable_names,
    zeros_like_state,
)

TOKENS = torch.tensor([[1, 504, 1122, 4944, 253, 37, 2]])


def _lora(seed: int = 0) -> torch.nn.Module:
    base = load_base_model(ModelConfig(name="tiny"), seed=seed)
    return get_method("lora").apply(base, MethodConfig(r=4))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=TOKENS).logits
    return out


def test_names_are_trainable_parameters_in_model_order() -> None:
    model = _lora()
    names = trainable_names(model)
    expected = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == expected
    assert list(get_trainable_state(model)) == names
    assert names[0].startswith("base_model.model.model.layers.0.")


def test_state_is_a_detached_clone() -> None:
    model = _lora()
    state = get_trainable_state(model)
    name = next(iter(state))
    assert not state[name].requires_grad
    assert state[name].dtype == torch.float32
    state[name].add_(1.0)
    assert not torch.equal(dict(model.named_parameters())[name], state[name])


def test_set_state_round_trips_and_changes_outputs() -> None:
    source, target = _lora(), _lora()
    gen = torch.Generator().manual_seed(0)
    moved = {
        k: v + 0.1 * torch.randn(v.shape, generator=gen)
        for k, v in get_trainable_state(source).items()
    }
    set_trainable_state(source, moved)
    assert not torch.allclose(_logits(source), _logits(target))
    set_trainable_state(target, get_trainable_state(source))
    assert torch.equal(_logits(source), _logits(target))
    got = get_trainable_state(target)
    assert all(torch.equal(got[k], moved[k]) for k in moved)
    assert trainable_names(target) == list(moved)  # still trainable after the copy


def test_set_state_rejects_mismatches() -> None:
    model = _lora()
    state = get_trainable_state(model)
    first, second = list(state)[:2]
    with pytest.raises(StateMismatchError, match="missing 1 key"):
        set_trainable_state(model, {k: v for k, v in state.items() if k != first})
    with pytest.raises(StateMismatchError, match="unexpected"):
        set_trainable_state(model, {**state, "bogus.weight": torch.zeros(1)})
    with pytest.raises(StateMismatchError, match="shape"):
        set_trainable_state(model, {**state, second: torch.zeros(3, 3)})
    before = get_trainable_state(model)
    assert all(torch.equal(before[k], state[k]) for k in state)  # nothing half-applied


def test_full_state_covers_every_parameter_once() -> None:
    base = load_base_model(ModelConfig(name="tiny"), seed=0)
    model = get_method("full").apply(base, MethodConfig(kind="full"))
    state = get_trainable_state(model)
    total, trainable = count_parameters(model)
    assert sum(t.numel() for t in state.values()) == trainable == total
    assert "lm_head.weight" not in state  # tied to the input embedding
    assert state_nbytes(state) == 4 * total


def test_zeros_and_nbytes() -> None:
    state = {"a": torch.ones(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    zeros = zeros_like_state(state)
    assert list(zeros) == ["a", "b"]
    assert all(not z.any() and z.dtype == state[k].dtype for k, z in zeros.items())
    assert state_nbytes(state) == 6 * 4 + 4 * 2
