"""Full fine-tuning: every parameter is trained and exchanged."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from fedllm.components import METHODS
from fedllm.model.methods.base import MethodError
from fedllm.model.settings import MethodConfig


@METHODS.register("full")
class FullMethod:
    """Train all parameters of the base model (tied weights count once)."""

    name = "full"

    def apply(self, model: PreTrainedModel, cfg: MethodConfig) -> torch.nn.Module:
        """Mark every parameter trainable and return ``model`` itself."""
        del cfg  # full fine-tuning has no settings
        model.requires_grad_(True)
        return model

    def export(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Save ``model`` as a directory ``AutoModelForCausalLM.from_pretrained`` loads."""
        self.merged(model).save_pretrained(out_dir)

    def merged(self, model: torch.nn.Module) -> PreTrainedModel:
        """``model`` itself: there is nothing to fold in."""
        if not isinstance(model, PreTrainedModel):
            raise MethodError(
                f"full fine-tuning exports a transformers model, got {type(model).__name__}"
            )
        return model
