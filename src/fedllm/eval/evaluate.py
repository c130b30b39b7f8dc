"""Held-out loss and perplexity of a model on tokenized examples."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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


LOSS_ROWS = 256
"""Scored positions whose logits exist at once (256 x a 49k vocabulary: 50 MB in fp32)."""

Project = Callable[[torch.Tensor], torch.Tensor]


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

    Logits are made only for the positions that carry a label, ``LOSS_ROWS`` at a
    time, from the model's last hidden states (its output head is bypassed in the
    forward pass): never the batch x length x vocabulary tensor of a plain
    ``model(**batch).loss``. Models whose logits are not the head's output alone
    (a logit scale or soft cap) are scored from their full logits.
    """
    was_training = model.training
    model.eval()
    device = input_device(model)
    loss_sum, tokens = 0.0, 0
    with hidden_states_out(model) as project:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id)
            labels = batch.pop("labels")
            with autocast(device, bf16):
                out = model(**{k: v.to(device) for k, v in batch.items()}).logits
            # out: the last hidden states when project is set. Shift the labels, not
            # the outputs: slicing them would copy them.
            targets = aligned_targets(labels, out.shape[1]).to(out.device)
            scored = targets != IGNORE_INDEX
            if project is None:
                flat = out.reshape(-1, out.shape[-1]).float()
                loss_sum += float(F.cross_entropy(flat, targets.reshape(-1), reduction="sum"))
            else:
                loss_sum += _chunked_loss(out[scored], targets[scored], project, device, bf16)
            tokens += int(scored.sum())
            del out
    model.train(was_training)
    return HeldOut(loss_sum, tokens)


@contextmanager
def hidden_states_out(model: torch.nn.Module) -> Iterator[Project | None]:
    """While open, ``model``'s forward returns its last hidden states as ``logits``; yields
    the output head (hidden states -> logits), or None where that would change the loss
    (no separate head, or logits scaled or capped after it) and the model is left alone."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    config = getattr(model, "config", None)
    rescaled = any(getattr(config, key, None) for key in ("final_logit_softcapping", "logit_scale"))
    if not isinstance(head, torch.nn.Module) or rescaled:
        yield None
        return
    own = head.__dict__.get("forward")  # an instance-level forward (e.g. accelerate's hook)
    project: Project = head.forward
    head.forward = _identity
    try:
        yield project
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


def _chunked_loss(
    hidden: torch.Tensor, targets: torch.Tensor, project: Project, device: torch.device, bf16: bool
) -> float:
    """Summed cross-entropy of ``[n, hidden]`` states against ``[n]`` targets, in chunks."""
    total = 0.0
    for lo in range(0, len(targets), LOSS_ROWS):
        with autocast(device, bf16):
            logits = project(hidden[lo : lo + LOSS_ROWS])
        chunk = targets[lo : lo + LOSS_ROWS].to(logits.device)
        total += float(F.cross_entropy(logits.float(), chunk, reduction="sum"))
    return total


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
