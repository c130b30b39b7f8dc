"""Held-out loss and perplexity of a model on tokenized examples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedllm.data import IGNORE_INDEX, Example, collate
from fedllm.model.device import autocast, input_device


@dataclass(frozen=True)
class HeldOut:
    """Summed token loss on a set of examples.

    Attributes:
        loss_sum: sum of per-token cross-entropy (nats).
        tokens: number of label tokens scored.
    """

    loss_sum: float
    tokens: int

    @property
    def loss(self) -> float:
        """Mean token loss (nats); NaN for an empty set."""
        return self.loss_sum / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        """``exp(loss)``."""
        return math.exp(self.loss) if self.tokens else math.nan


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    bf16: bool = False,
) -> HeldOut:
    """Token-level cross-entropy of ``model`` on ``examples`` (labels -100 ignored).

    The same tokens are scored for every method: position ``i`` of the input
    predicts label ``i + 1``. Models that prepend virtual tokens (prompt tuning,
    P-tuning) return that many extra leading logit positions; they are skipped.
    """
    was_training = model.training
    model.eval()
    device = input_device(model)
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        labels = batch.pop("labels")
        with autocast(device, bf16):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        # Shift the labels, not the logits: slicing logits would copy them
        # (batch x length x vocab floats, the largest tensor of the step).
        targets = aligned_targets(labels, logits.shape[1]).to(logits.device)
        flat = logits.reshape(-1, logits.shape[-1])
        loss_sum += float(F.cross_entropy(flat.float(), targets.reshape(-1), reduction="sum"))
        tokens += int((targets != IGNORE_INDEX).sum())
        del logits, flat
    model.train(was_training)
    return HeldOut(loss_sum, tokens)


def aligned_targets(labels: torch.Tensor, positions: int) -> torch.Tensor:
    """Next-token targets for ``positions`` logit positions of a ``[batch, length]`` label batch.

    The last ``length`` positions belong to the input (the first
    ``positions - length`` are virtual tokens, if any); input position ``i``
    gets label ``i + 1``; everything else is IGNORE_INDEX.

    Raises:
        ValueError: if there are fewer positions than labels.
    """
    batch, length = labels.shape
    offset = positions - length
    if offset < 0:
        raise ValueError(f"the model returned {positions} logit positions for {length} tokens")
    targets = torch.full((batch, positions), IGNORE_INDEX, dtype=labels.dtype)
    targets[:, offset : positions - 1] = labels[:, 1:]
    return targets


def summarize(per_client: Mapping[str, HeldOut], test: HeldOut | None) -> dict[str, float]:
    """Mean, token-weighted mean and worst client loss/perplexity, and the test split's.

    Keys: ``clients_loss_mean``, ``clients_ppl_mean`` (exp of the mean loss),
    ``clients_loss_weighted``, ``clients_ppl_weighted``, ``clients_loss_worst``,
    ``clients_ppl_worst``, ``test_loss``, ``test_ppl``.
    """
    out: dict[str, float] = {}
    scored = {cid: h for cid, h in per_client.items() if h.tokens}
    if scored:
        losses = [h.loss for h in scored.values()]
        mean = sum(losses) / len(losses)
        weighted = sum(h.loss_sum for h in scored.values()) / sum(h.tokens for h in scored.values())
        worst = max(losses)
        out.update(
            clients_loss_mean=mean,
            clients_ppl_mean=math.exp(mean),
            clients_loss_weighted=weighted,
            clients_ppl_weighted=math.exp(weighted),
            clients_loss_worst=worst,
            clients_ppl_worst=math.exp(worst),
        )
    if test is not None and test.tokens:
        out.update(test_loss=test.loss, test_ppl=test.perplexity)
    return out
