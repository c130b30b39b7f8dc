"""Per-example losses of a model: what the audit's attacks and ranks are computed from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedllm.data.canary import canary_record
from fedllm.data.format import IGNORE_INDEX, Example, collate, encode_each_chat
from fedllm.model.device import input_device

Tick = Callable[[int], None]
"""Told how many examples were just scored (a progress bar's advance)."""


@torch.no_grad()
def example_losses(
    model: torch.nn.Module,
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    tick: Tick | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each example's summed token loss (nats) and its number of scored tokens.

    Position ``i`` predicts label ``i + 1`` (labels -100 take no loss), as training
    and evaluation score them; leading virtual-token positions (prompt tuning,
    P-tuning) are skipped.

    Returns:
        ``(loss_sums, tokens)``, float64 and int64 arrays in the order of ``examples``.
    """
    was_training = model.training
    model.eval()
    device = input_device(model)
    sums = np.zeros(len(examples), dtype=np.float64)
    tokens = np.zeros(len(examples), dtype=np.int64)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk, pad_id)
        labels = batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        targets = _next_token_targets(labels, logits.shape[1]).to(logits.device)
        scored = targets != IGNORE_INDEX
        rows = scored.nonzero()[:, 0]  # which example each scored position belongs to
        per_token = F.cross_entropy(logits[scored].float(), targets[scored], reduction="none")
        per_example = torch.zeros(len(chunk), dtype=torch.float64, device=logits.device)
        per_example.index_add_(0, rows, per_token.double())
        sums[start : start + len(chunk)] = per_example.cpu().numpy()
        tokens[start : start + len(chunk)] = scored.sum(dim=1).cpu().numpy()
        del logits, per_token
        if tick is not None:
            tick(len(chunk))
    model.train(was_training)
    return sums, tokens


def mean_losses(
    model: torch.nn.Module,
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    tick: Tick | None = None,
) -> np.ndarray:
    """Each example's mean token loss (nats per scored token; NaN where none is scored)."""
    sums, tokens = example_losses(model, examples, batch_size, pad_id, tick)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tokens > 0, sums / np.maximum(tokens, 1), np.nan)


def encode_texts(texts: Sequence[str], kind: str, tokenizer: Any) -> list[Example]:
    """Each text as one example, formatted the way a canary is inserted: for ``"chat"``
    the chat-templated reply to the canary's user turn (loss on the reply), for
    ``"text"`` the tokens plus EOS (loss on every token). Nothing is truncated.

    Raises:
        ValueError: a chat text leaves no assistant token.
    """
    if kind == "chat":
        encoded = encode_each_chat(
            [canary_record(text, "chat")["messages"] for text in texts], tokenizer, None
        )
        if any(e is None for e in encoded):
            raise ValueError("a canary text left no assistant token to score")
        return [e for e in encoded if e is not None]
    eos = tokenizer.eos_token_id
    out = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        full = [*ids, eos] if isinstance(eos, int) else list(ids)
        out.append(Example(input_ids=full, labels=list(full)))
    return out


def _next_token_targets(labels: torch.Tensor, positions: int) -> torch.Tensor:
    """``[batch, positions]`` targets: input position ``i`` gets label ``i + 1``; leading
    virtual-token positions (``positions - length`` of them) and the last get none."""
    batch, length = labels.shape
    offset = positions - length
    if offset < 0:
        raise ValueError(f"the model returned {positions} logit positions for {length} tokens")
    targets = torch.full((batch, positions), IGNORE_INDEX, dtype=labels.dtype)
    targets[:, offset : positions - 1] = labels[:, 1:]
    return targets
