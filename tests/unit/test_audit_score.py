"""Per-example losses against evaluation's summed loss (every method, virtual tokens
included), their order within a batch, and extraction on a model whose replies are known."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedllm.data.canary import CHAT_PROMPT
from fedllm.eval.evaluate import evaluate
from fedllm.model.methods import get_method
from fedllm.privacy.audit.extract import extract, prompt_ids
from fedllm.privacy.audit.score import encode_texts, example_losses, mean_losses
from tests.unit.test_evaluate import examples
from tests.unit.test_method_kinds import SMALL, perturb, tiny


@pytest.mark.parametrize("kind", ["lora", "prompt", "prefix", "full"])
def test_per_example_losses_add_up_to_the_evaluation_loss(kind: str) -> None:
    torch.manual_seed(0)
    model = tiny() if kind == "full" else get_method(kind).apply(tiny(), SMALL)
    perturb(model, scale=0.3)
    items = examples()
    sums, tokens = example_losses(model, items, batch_size=4, pad_id=2)
    held_out = evaluate(model, items, batch_size=4, pad_id=2)
    assert tokens.sum() == held_out.tokens
    assert sums.sum() == pytest.approx(held_out.loss_sum, rel=1e-5)
    # each example alone gives its own row: padding and batching change nothing
    for i, item in enumerate(items):
        alone = evaluate(model, [item], batch_size=1, pad_id=2)
        assert sums[i] == pytest.approx(alone.loss_sum, rel=1e-5, abs=1e-6)
        assert tokens[i] == alone.tokens
    means = mean_losses(model, items, batch_size=3, pad_id=2)
    scored = tokens > 0
    np.testing.assert_allclose(means[scored], sums[scored] / tokens[scored], rtol=1e-5)
    assert np.isnan(means[~scored]).all()


def test_candidate_texts_are_scored_on_the_reply(data_tokenizer: Any) -> None:
    chat = encode_texts(["my secret code is 123"], "chat", data_tokenizer)[0]
    scored = [t for t, label in zip(chat.input_ids, chat.labels, strict=True) if label != -100]
    assert data_tokenizer.decode(scored).startswith("my secret code is 123")
    assert CHAT_PROMPT in data_tokenizer.decode(chat.input_ids)
    text = encode_texts(["my secret code is 123"], "text", data_tokenizer)[0]
    assert text.labels == text.input_ids and text.input_ids[-1] == data_tokenizer.eos_token_id


class Scripted(torch.nn.Module):
    """Predicts ``script`` token by token after a prompt of ``start`` tokens, then EOS."""

    def __init__(self, script: list[int], start: int, vocab: int, eos: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 1)
        self.script, self.start, self.vocab, self.eos = script, start, vocab, eos

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        step = input_ids.shape[1] - self.start
        token = self.script[step] if step < len(self.script) else self.eos
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        logits[0, -1, token] = 1.0
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize(
    ("said", "reproduced"),
    [(" 702", True), (" 7021", False), (" 70", False), (" 702 and more", True), (" x", False)],
)
def test_extraction_reads_the_greedy_completion(
    data_tokenizer: Any, said: str, reproduced: bool
) -> None:
    tok = data_tokenizer
    start = len(prompt_ids("my secret code is ", "chat", tok))
    script = tok(said, add_special_tokens=False)["input_ids"]
    model = Scripted(script, start, len(tok), tok.eos_token_id)
    got = extract(model, tok, "my secret code is ", "702", "chat")
    assert got.reproduced is reproduced
    assert got.completion == tok.decode(script[: len("702") + 4])


def test_extraction_prompt_ends_with_the_prefix(data_tokenizer: Any) -> None:
    ids = prompt_ids("my secret code is ", "chat", data_tokenizer)
    text = data_tokenizer.decode(ids)
    assert text.endswith("assistant\nmy secret code is") and CHAT_PROMPT in text
    assert data_tokenizer.decode(prompt_ids("my code: ", "text", data_tokenizer)) == "my code:"
