"""Shared base of the methods peft implements: wrap the model, export, merge."""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from fedllm.model.methods.base import MethodError
from fedllm.model.settings import MethodConfig


class PeftMethod(ABC):
    """A method defined by a peft config; subclasses implement :meth:`peft_config`.

    Only the parameters peft marks trainable are exchanged. The export is a peft
    adapter directory (``PeftModel.from_pretrained(base, out_dir)`` loads it);
    its ``base_model_name_or_path`` is the model's ``name_or_path`` (the fedllm
    model name when loaded with :func:`fedllm.model.load.load_base_model`).
    """

    name = "peft"
    checkpointing_conflict: str | None = None
    """Why the method cannot train with activation checkpointing; None: it can."""

    @abstractmethod
    def peft_config(self, model: PreTrainedModel, cfg: MethodConfig) -> PeftConfig:
        """The peft config for ``model`` (may check ``model`` and raise MethodError)."""

    def apply(self, model: PreTrainedModel, cfg: MethodConfig) -> torch.nn.Module:
        """Wrap ``model`` (in place) with :meth:`peft_config` and return the peft model."""
        config = self.peft_config(model, cfg)
        with warnings.catch_warnings():
            # peft calls a transformers API deprecated in 5.x; nothing a user can act on.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            return get_peft_model(model, config)

    def export(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Save the adapter so that ``PeftModel.from_pretrained(base, out_dir)`` loads it.

        Only adapter weights are saved: fedllm never resizes the vocabulary, which
        also spares peft's hub lookup of the base model's config.
        """
        self.peft(model).save_pretrained(str(out_dir), save_embedding_layers=False)

    def merged(self, model: torch.nn.Module) -> PreTrainedModel:
        """A deep copy of the base model with the adapter merged into its weights."""
        merged = copy.deepcopy(self.peft(model)).merge_and_unload()
        if not isinstance(merged, PreTrainedModel):
            raise MethodError(f"merging gave a {type(merged).__name__}, not a transformers model")
        merged.requires_grad_(False)
        return merged

    def peft(self, model: torch.nn.Module) -> PeftModel:
        """``model`` as a peft model.

        Raises:
            MethodError: if ``model`` is not one (it was not prepared by :meth:`apply`).
        """
        if not isinstance(model, PeftModel):
            raise MethodError(f"expected a {self.name} (peft) model, got {type(model).__name__}")
        return model
