"""FreeLB's perturbation of the input embeddings: its start, ascent step and projection.

Norms are per example: the Frobenius norm of an example's ``[length, hidden]``
perturbation (padding included, where the start is zero and the gradient is zero).
"""

from __future__ import annotations

import torch

TINY = 1e-8
"""Floor of a gradient's norm in the ascent step (a zero gradient leaves delta as it is)."""


def start_delta(
    shape: torch.Size, attention_mask: torch.Tensor, magnitude: float, dtype: torch.dtype
) -> torch.Tensor:
    """``delta_0``: uniform in ``[-1, 1]`` on the real tokens (zero on padding), times
    ``magnitude / sqrt(L_i d)``, ``L_i`` example ``i``'s real tokens and ``d`` the hidden
    size (FreeLB's ``1 / sqrt(N_delta) U(-sigma, sigma)``). Drawn from the global RNG;
    zero when ``magnitude`` is 0."""
    mask = attention_mask.to(dtype).unsqueeze(-1)
    if magnitude == 0:
        return torch.zeros(shape, dtype=dtype, device=attention_mask.device)
    uniform = torch.empty(shape, dtype=dtype, device=attention_mask.device).uniform_(-1, 1)
    dims = attention_mask.sum(dim=1).to(dtype).clamp(min=1) * shape[-1]
    return uniform * mask * (magnitude / dims.sqrt()).view(-1, 1, 1)


def example_norms(delta: torch.Tensor) -> torch.Tensor:
    """Each example's Frobenius norm, ``[batch]`` (float32 or wider)."""
    norms: torch.Tensor = delta.reshape(delta.shape[0], -1).float().norm(dim=1)
    return norms


def unit_steps(grad: torch.Tensor) -> torch.Tensor:
    """``g / ||g||`` per example (a zero gradient stays zero)."""
    return grad / example_norms(grad).clamp(min=TINY).view(-1, 1, 1).to(grad.dtype)


def into_ball(delta: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``delta`` scaled per example onto ``||delta_i|| <= bound_i`` where it lies outside
    (``bound``: ``[batch]``); detached."""
    norms = example_norms(delta)
    scale = torch.where(norms > bound, bound / norms.clamp(min=TINY), torch.ones_like(norms))
    return (delta * scale.view(-1, 1, 1).to(delta.dtype)).detach()


def ascend(
    delta: torch.Tensor, grad: torch.Tensor, step_size: float, epsilon: float
) -> torch.Tensor:
    """One ascent step and projection: ``delta + alpha g / ||g||`` (per example), then
    scaled back onto ``||delta|| <= epsilon`` where it is outside (``epsilon = 0``: no
    bound). A new tensor, detached."""
    moved = (delta + step_size * unit_steps(grad)).detach()
    if epsilon == 0:
        return moved
    bound = torch.full((delta.shape[0],), epsilon, dtype=torch.float32, device=delta.device)
    return into_ball(moved, bound)
