"""The Method protocol: what part of the model is trained, exchanged and exported."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedModel

from fedllm.model.settings import MethodConfig


class MethodError(ValueError):
    """A method that cannot be applied to, or exported from, a model."""


class Method(Protocol):
    """A fine-tuning method, registered by name in ``fedllm.components.METHODS``.

    After :meth:`apply`, exactly the parameters the method trains have
    ``requires_grad`` set: they are the state clients exchange (see
    :mod:`fedllm.model.state`). A method that cannot train with activation
    checkpointing says why in a class attribute ``checkpointing_conflict``
    (see :func:`check_gradient_checkpointing`).
    """

    name: str

    def apply(self, model: PreTrainedModel, cfg: MethodConfig) -> torch.nn.Module:
        """Prepare ``model`` for training (may modify it in place) and return the model to train."""
        ...

    def export(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Save the trained part of ``model`` to ``out_dir`` in Hugging Face format."""
        ...

    def merged(self, model: torch.nn.Module) -> PreTrainedModel:
        """A plain transformers model with the method folded in (``model`` is left as is)."""
        ...


def check_gradient_checkpointing(method: Method) -> None:
    """Raise if ``method`` cannot train with activation checkpointing.

    A method declares the conflict with a class attribute
    ``checkpointing_conflict`` (a reason, or None when checkpointing works);
    methods without the attribute are assumed to work.

    Raises:
        MethodError: naming the method, the setting and the reason.
    """
    reason = getattr(method, "checkpointing_conflict", None)
    if reason:
        raise MethodError(
            f"method.kind = {method.name!r} does not work with "
            f"client.gradient_checkpointing = true: {reason}; turn checkpointing off"
        )


def hidden_size(model: PreTrainedModel) -> int:
    """The model's hidden size (features per token), from its config.

    Raises:
        MethodError: if the config does not say.
    """
    size = getattr(model.config, "hidden_size", None)
    if not isinstance(size, int):
        raise MethodError(f"cannot tell the hidden size of {type(model).__name__} from its config")
    return size
