"""Projected gradient ascent on a prompt's input embeddings (Madry et al. 2018, on the
embeddings as in Zhu et al. 2020's FreeLB): how far a perturbation of a given norm
raises the loss of the reference response.

For each example, ``delta`` (on the prompt's tokens only, zero elsewhere) starts at
zero and takes ``T`` steps: ``L2``: ``delta + alpha g / ||g||`` then scaled back onto
``||delta|| <= eps``; ``Linf``: ``delta + alpha sign(g)`` then clipped to ``[-eps,
eps]``; ``alpha = 2.5 eps / T`` (Madry et al.'s rule). The loss reported is the highest
any iterate reached (the attacker keeps its best). ``eps`` is in embedding units, or a
fraction of the prompt's own embeddings (``relative``: of their Frobenius norm for L2,
of their root-mean-square entry for Linf), so one setting means the same on any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from fedllm.data import collate
from fedllm.security.embeds import embedded_loss, working_dtype
from fedllm.security.evasion.prompts import Prompt
from fedllm.security.freelb.perturb import example_norms, into_ball, unit_steps

Norm = Literal["l2", "linf"]
Scale = Literal["absolute", "relative"]

STEP_FACTOR = 2.5
"""alpha = STEP_FACTOR x eps / steps (Madry et al. 2018)."""


@dataclass(frozen=True)
class Attacked:
    """One batch of examples attacked at one budget.

    Attributes:
        clean: each example's loss with no perturbation (nats per response token).
        attacked: the highest loss an iterate reached.
        budgets: each example's bound on its perturbation's norm (embedding units).
        norms: the final perturbation's norm per example (L2 or Linf, as attacked).
        delta: the final perturbation, ``[batch, length, hidden]`` (zero off the prompt).
    """

    clean: torch.Tensor
    attacked: torch.Tensor
    budgets: torch.Tensor
    norms: torch.Tensor
    delta: torch.Tensor


def norm_of(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Each example's L2 (Frobenius) or Linf norm, ``[batch]``."""
    if norm == "l2":
        return example_norms(delta)
    values: torch.Tensor = delta.reshape(delta.shape[0], -1).float().abs().amax(dim=1)
    return values


def budgets_of(
    embeds: torch.Tensor, prompt: torch.Tensor, eps: float, norm: Norm, scale: Scale
) -> torch.Tensor:
    """Each example's bound: ``eps``, or ``eps`` times its prompt embeddings' Frobenius
    norm (L2) or root-mean-square entry (Linf) when ``relative``."""
    if scale == "absolute":
        flat: torch.Tensor = torch.full((embeds.shape[0],), eps, device=embeds.device)
        return flat
    masked = (embeds * prompt).float()
    frobenius: torch.Tensor = masked.reshape(embeds.shape[0], -1).norm(dim=1)
    if norm == "l2":
        return frobenius * eps
    entries = prompt.reshape(embeds.shape[0], -1).sum(dim=1).float() * embeds.shape[-1]
    rms: torch.Tensor = frobenius / entries.clamp(min=1).sqrt()
    return rms * eps


def linf_step(
    delta: torch.Tensor, grad: torch.Tensor, step: torch.Tensor, budget: torch.Tensor
) -> torch.Tensor:
    """``clip(delta + step sign(g), -budget, budget)`` per example (detached)."""
    moved = delta + step.view(-1, 1, 1) * grad.sign()
    bound = budget.view(-1, 1, 1).to(delta.dtype)
    return torch.maximum(torch.minimum(moved, bound), -bound).detach()


def pgd(
    model: torch.nn.Module,
    embeddings: torch.nn.Module,
    prompts: Sequence[Prompt],
    eps: float,
    steps: int,
    pad_id: int,
    norm: Norm = "l2",
    scale: Scale = "relative",
) -> Attacked:
    """Attack ``prompts`` (one batch) at budget ``eps`` with ``steps`` PGD steps.

    The model's parameters are not changed and get no gradient.
    """
    if steps < 1 or eps < 0:
        raise ValueError(f"PGD needs steps >= 1 and eps >= 0, got {steps} and {eps}")
    weight = next(embeddings.parameters())
    batch = collate([p.example() for p in prompts], pad_id)
    ids, mask = batch["input_ids"].to(weight.device), batch["attention_mask"].to(weight.device)
    labels = batch["labels"]
    dtype = working_dtype(weight)
    on_prompt = torch.zeros(ids.shape, dtype=dtype, device=weight.device)
    for row, p in enumerate(prompts):
        on_prompt[row, : len(p.ids)] = 1
    on_prompt = on_prompt.unsqueeze(-1)
    with torch.no_grad():
        embeds = embeddings(ids).to(dtype)
    budget = budgets_of(embeds, on_prompt, eps, norm, scale)
    step = STEP_FACTOR * budget / steps
    delta = torch.zeros_like(embeds)
    with torch.no_grad():
        clean = embedded_loss(model, embeds, mask, labels).detach()
    best = clean.clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = embedded_loss(model, embeds + delta * on_prompt, mask, labels)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        best = torch.maximum(best, loss.detach())  # grad is zero off the prompt
        if norm == "l2":
            delta = into_ball(delta.detach() + step.view(-1, 1, 1) * unit_steps(grad), budget)
        else:
            delta = linf_step(delta.detach(), grad, step, budget)
    with torch.no_grad():
        final = embedded_loss(model, embeds + delta * on_prompt, mask, labels)
    best = torch.maximum(best, final)
    return Attacked(clean, best, budget, norm_of(delta, norm), delta.detach())
