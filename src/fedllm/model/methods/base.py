"""The Method protocol: what part of the model is trained, exchanged and exported."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedModel

from fedllm.config import MethodConfig


class MethodError(ValueError):
    """A method that cannot be applied to, or exported from, a model."""


class Method(Protocol):
    """A fine-tuning method, registered by name in ``fedllm.components.METHODS``.

    After :meth:`apply`, exactly the parameters the method trains have
    ``requires_grad`` set: they are the state clients exchange (see
    :mod:`fedllm.model.state`).
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
