"""Splitting the trainable state into shared and personal parts."""

import pytest
import torch

from fedllm.algorithms.personal.split import ROWS_SUFFIX, PersonalizationError, PersonalSplit

STATE = {
    "layers.0.q.lora_A.weight": torch.randn(2, 8),
    "layers.0.q.lora_B.weight": torch.randn(8, 2),
    "layers.1.q.lora_B.weight": torch.randn(8, 2),
    "prompt_encoder.default.embedding.weight": torch.randn(6, 8),
}


def test_split_by_pattern_and_merge_back() -> None:
    split = PersonalSplit(("*lora_B*",))
    shared, personal = split.split(STATE)
    assert set(personal) == {"layers.0.q.lora_B.weight", "layers.1.q.lora_B.weight"}
    assert "layers.0.q.lora_A.weight" in shared and not set(shared) & set(personal)
    merged = split.merge(shared, personal)
    assert all(torch.equal(merged[k], STATE[k]) for k in STATE)


def test_trailing_prompt_tokens_are_personal_rows() -> None:
    split = PersonalSplit(prompt_tokens=2)
    shared, personal = split.split(STATE)
    name = "prompt_encoder.default.embedding.weight"
    assert shared[name].shape == (4, 8)
    assert torch.equal(personal[name + ROWS_SUFFIX], STATE[name][-2:])
    assert torch.equal(split.merge(shared, personal)[name], STATE[name])


def test_bad_splits_are_refused_with_the_reason() -> None:
    with pytest.raises(PersonalizationError, match="matches no trainable parameter"):
        PersonalSplit(("*lora_C*",)).check(STATE)
    with pytest.raises(PersonalizationError, match="nothing is shared"):
        PersonalSplit(("*",)).check(STATE)
    with pytest.raises(PersonalizationError, match="must be below the 6 virtual tokens"):
        PersonalSplit(prompt_tokens=6).check(STATE)
    no_prompt = {k: v for k, v in STATE.items() if "prompt" not in k}
    with pytest.raises(PersonalizationError, match="needs virtual tokens"):
        PersonalSplit(prompt_tokens=1).check(no_prompt)
    assert not PersonalSplit().active
