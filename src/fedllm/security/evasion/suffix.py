"""A greedy search for an adversarial suffix of ``k`` tokens (a small version of Zou et
al. 2023's Greedy Coordinate Gradient): appended to a prompt, it makes the model's
greedy reply start with a target string.

Each step proposes ``B`` suffixes that differ from the current one in one position,
the new token drawn from that position's candidates: the ``top_k`` tokens whose one-hot
gradient most lowers the target's loss (GCG), or tokens drawn at random. Every proposal
is scored and the best replaces the current suffix if it succeeds or lowers the loss.
The search stops on success: the target's tokens are each the model's most likely next
token given the prompt, the suffix and the target's earlier tokens (exactly when greedy
decoding starts with the target), or its loss is under a threshold.

Differences from GCG: one prompt at a time (no universal suffix across prompts), and
a proposal replaces the current suffix only when it is no worse (GCG always moves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedllm.eval.evaluate import hidden_states_out
from fedllm.security.embeds import working_dtype
from fedllm.security.evasion.prompts import Prompt


@dataclass(frozen=True)
class Scored:
    """Suffixes scored against the target.

    Attributes:
        loss: each suffix's mean token loss of the target (nats), ``[B]``.
        success: whether it makes the target the greedy reply (or its loss low enough).
    """

    loss: torch.Tensor
    success: torch.Tensor


Score = Callable[[torch.Tensor], Scored]
"""``[B, k]`` suffixes -> their scores."""

Propose = Callable[[torch.Tensor], torch.Tensor]
"""The current ``[k]`` suffix -> ``[k, m]`` candidate tokens for each position."""


@dataclass(frozen=True)
class Found:
    """What the search found.

    Attributes:
        suffix: the final suffix's token ids.
        start_loss: the target's loss with the starting suffix.
        loss: with the final suffix.
        success: the final suffix succeeds.
        steps: search steps taken.
        scored: suffixes scored (the search's cost in forward passes of one sequence).
    """

    suffix: list[int]
    start_loss: float
    loss: float
    success: bool
    steps: int
    scored: int


def greedy_suffix(
    score: Score,
    propose: Propose,
    start: torch.Tensor,
    steps: int,
    candidates: int,
    generator: torch.Generator,
) -> Found:
    """Search from the ``start`` suffix for at most ``steps`` steps of ``candidates``
    single-token substitutions each (positions and tokens drawn with ``generator``)."""
    current = start.clone()
    first = score(current[None])
    loss, success = float(first.loss[0]), bool(first.success[0])
    start_loss, scored, taken = loss, 1, 0
    while taken < steps and not success:
        taken += 1
        pool = propose(current)
        where = torch.randint(len(current), (candidates,), generator=generator)
        pick = torch.randint(pool.shape[1], (candidates,), generator=generator)
        proposals = current.repeat(candidates, 1)
        proposals[torch.arange(candidates), where] = pool[where, pick].to(current.dtype)
        result = score(proposals)
        scored += candidates
        ranked = result.loss.float() - 1e9 * result.success.float()  # a success first
        best = int(torch.argmin(ranked))
        if bool(result.success[best]) or float(result.loss[best]) <= loss:
            current = proposals[best].clone()
            loss, success = float(result.loss[best]), bool(result.success[best])
    return Found(current.tolist(), start_loss, loss, success, taken, scored)


class SuffixAttack:
    """The model-side pieces of the search for one prompt and target.

    The attacked sequence is the prompt's head, the suffix, the prompt's template tail
    (end of the user turn, assistant header), then the target.

    Args:
        model: the attacked model.
        embeddings: its input embedding layer.
        prompt: the prompt the suffix extends.
        target: the reply's token ids the attacker wants first.
        allowed: ``[vocab]`` booleans: tokens a suffix may use (no special tokens).
        success_loss: the target's loss (nats per token) under which the search succeeds
            as well; None: only greedy success counts.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        embeddings: torch.nn.Module,
        prompt: Prompt,
        target: list[int],
        allowed: torch.Tensor,
        success_loss: float | None = None,
    ) -> None:
        if not target:
            raise ValueError("the suffix search needs a target of at least one token")
        self.model, self.embeddings, self.allowed = model, embeddings, allowed
        cut = len(prompt.ids) - prompt.tail
        self.device = next(embeddings.parameters()).device
        self.head = torch.tensor(prompt.ids[:cut], dtype=torch.long, device=self.device)
        self.tail = torch.tensor(prompt.ids[cut:], dtype=torch.long, device=self.device)
        self.target = torch.tensor(target, dtype=torch.long, device=self.device)
        self.success_loss = success_loss

    def sequences(self, suffixes: torch.Tensor) -> torch.Tensor:
        """``[B, length]`` token ids: head, suffix, tail, target."""
        rows = suffixes.shape[0]
        parts = [self.head, self.tail, self.target]
        head, tail, target = (p.expand(rows, -1) for p in parts)
        return torch.cat([head, suffixes.to(self.device), tail, target], dim=1)

    def _target_loss(
        self, out: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row target loss and greedy success from the model's last outputs."""
        n = len(self.target)
        states = out[:, -n - 1 : -1]  # position i predicts token i + 1
        logits = (states if project is None else project(states)).float()
        loss = F.cross_entropy(
            logits.transpose(1, 2), self.target.expand(len(out), -1), reduction="none"
        ).mean(dim=1)
        greedy = (logits.argmax(dim=-1) == self.target).all(dim=1)
        if self.success_loss is not None:
            greedy = greedy | (loss < self.success_loss)
        return loss, greedy

    @torch.no_grad()
    def score(self, suffixes: torch.Tensor) -> Scored:
        """Each suffix's target loss and success (one batched forward pass)."""
        ids = self.sequences(suffixes)
        with hidden_states_out(self.model) as project:
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            loss, success = self._target_loss(out, project)
        return Scored(loss.cpu(), success.cpu())

    def gradient_candidates(self, top_k: int) -> Propose:
        """GCG's proposals: per position, the ``top_k`` allowed tokens with the most
        negative gradient of the target loss with respect to the suffix's one-hot."""

        def propose(current: torch.Tensor) -> torch.Tensor:
            weight = next(self.embeddings.parameters())
            dtype = working_dtype(weight)
            one_hot = F.one_hot(current.to(self.device), weight.shape[0]).to(dtype)
            one_hot.requires_grad_(True)
            ids = self.sequences(current[None])
            embeds = self.embeddings(ids).detach().to(dtype)
            start = len(self.head)
            embeds = torch.cat(
                [
                    embeds[:, :start],
                    (one_hot @ weight.to(dtype))[None],
                    embeds[:, start + len(current) :],
                ],
                dim=1,
            )
            out = self.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits
            loss, _ = self._target_loss(out, None)
            (grad,) = torch.autograd.grad(loss.sum(), one_hot)
            grad = grad.float().masked_fill(~self.allowed.to(grad.device), float("inf"))
            return (-grad).topk(top_k, dim=1).indices.cpu()

        return propose

    def random_candidates(self, count: int, generator: torch.Generator) -> Propose:
        """Proposals drawn uniformly from the allowed tokens, ``count`` per position."""
        choices = self.allowed.nonzero().squeeze(1).cpu()

        def propose(current: torch.Tensor) -> torch.Tensor:
            picks = torch.randint(len(choices), (len(current), count), generator=generator)
            return choices[picks]

        return propose
