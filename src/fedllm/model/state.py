"""The exchanged state: a flat dict of the model's trainable parameters.

Keys are the names from ``model.named_parameters()`` of the model being trained
(the peft-wrapped model for LoRA), in model order; values are tensors in the
parameters' own dtype. Tied parameters appear once.
"""

from __future__ import annotations

import torch

from fedllm.types import Params

_MAX_LISTED = 5


class StateMismatchError(ValueError):
    """A state dict whose keys or shapes do not fit the model's trainable parameters."""


def trainable_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters with ``requires_grad``, in model order."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def get_trainable_state(model: torch.nn.Module) -> Params:
    """Detached copies of the trainable parameters in CPU memory (safe to keep while
    training goes on): the exchanged state lives on the CPU whatever the model's device."""
    return {
        name: param.detach().to("cpu", copy=True)
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def set_trainable_state(model: torch.nn.Module, params: Params) -> None:
    """Copy ``params`` into the model's trainable parameters, in place.

    Values are cast to each parameter's dtype and device.

    Raises:
        StateMismatchError: on missing or extra keys, or a shape mismatch.
    """
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = [name for name in trainable if name not in params]
    extra = [name for name in params if name not in trainable]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listing(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s): {_listing(extra)}")
    problems += [
        f"{name}: shape {tuple(params[name].shape)} != model's {tuple(p.shape)}"
        for name, p in trainable.items()
        if name in params and params[name].shape != p.shape
    ]
    if problems:
        raise StateMismatchError(
            "state does not match the model's trainable parameters: " + "; ".join(problems)
        )
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(params[name])


def zeros_like_state(params: Params) -> Params:
    """A state with the same keys, shapes and dtypes, all zeros."""
    return {name: torch.zeros_like(t) for name, t in params.items()}


def state_nbytes(params: Params) -> int:
    """Bytes the tensors of ``params`` hold (what exchanging them costs, uncompressed)."""
    return sum(t.numel() * t.element_size() for t in params.values())


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts; tied parameters count once."""
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return total, trainable


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def all_finite(params: Params) -> bool:
    """True if no tensor holds NaN or Inf."""
    return all(bool(torch.isfinite(t).all()) for t in params.values())
