"""Shared base of the prompt-learning methods (prompt, prefix, P-tuning).

They add virtual tokens in front of every sequence (as input embeddings, or
as a key/value prefix in every layer) instead of changing the base weights,
so they cannot be merged into a plain model.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from fedllm.model.methods.base import MethodError
from fedllm.model.methods.peft_method import PeftMethod


class PromptLearningMethod(PeftMethod):
    """A peft prompt-learning method: exported as a peft adapter, never merged."""

    def merged(self, model: torch.nn.Module) -> PreTrainedModel:
        """Always raises: virtual tokens are not a change of the base weights.

        Raises:
            MethodError: saying to export without ``--merge``.
        """
        raise MethodError(
            f"method.kind = {self.name!r} cannot be merged into the base weights: its "
            "virtual tokens are extra inputs, not a change of any weight. Export without "
            "--merge (a peft adapter that PeftModel.from_pretrained(base, dir) loads)"
        )


def is_prompt_learning(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft prompt-learning model (virtual tokens or a kv prefix)."""
    return isinstance(model, PeftModel) and bool(model.active_peft_config.is_prompt_learning)
