"""LoRA: low-rank adapters on chosen linear layers; only the adapters are trained."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from fedllm.components import METHODS
from fedllm.config import MethodConfig
from fedllm.model.methods.base import MethodError


@METHODS.register("lora")
class LoraMethod:
    """Wrap ``method.target_modules`` with rank-``r`` LoRA adapters (peft)."""

    name = "lora"

    def apply(self, model: PreTrainedModel, cfg: MethodConfig) -> torch.nn.Module:
        """Inject adapters into ``model`` (in place) and return the peft model.

        Only ``lora_A`` / ``lora_B`` weights are trainable. The adapter config's
        ``base_model_name_or_path`` is the model's ``name_or_path`` (the fedllm
        model name when loaded with :func:`fedllm.model.load_base_model`).

        Raises:
            MethodError: if a target module matches no linear layer of ``model``.
        """
        check_target_modules(model, cfg.target_modules)
        config = LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft accepts a float scale
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            # peft calls a transformers API deprecated in 5.x; nothing a user can act on.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            return get_peft_model(model, config)

    def export(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Save the adapter so that ``PeftModel.from_pretrained(base, out_dir)`` loads it.

        Only adapter weights are saved: fedllm never resizes the vocabulary, which
        also spares peft's hub lookup of the base model's config.
        """
        _peft(model).save_pretrained(str(out_dir), save_embedding_layers=False)

    def merged(self, model: torch.nn.Module) -> PreTrainedModel:
        """A deep copy of the base model with the adapters merged into its weights."""
        merged = copy.deepcopy(_peft(model)).merge_and_unload()
        if not isinstance(merged, PreTrainedModel):
            raise MethodError(f"merging gave a {type(merged).__name__}, not a transformers model")
        merged.requires_grad_(False)
        return merged


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct last name components of the linear modules of ``model``, sorted."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if _is_linear(mod)}
    )


def check_target_modules(model: torch.nn.Module, targets: list[str]) -> None:
    """Raise if a target matches no linear module (peft's rule: full name or dotted suffix).

    Raises:
        MethodError: naming the missing targets and the available linear modules.
    """
    if not targets:
        raise MethodError("method.target_modules is empty; LoRA needs at least one module")
    names = [name for name, mod in model.named_modules() if _is_linear(mod)]
    missing = [
        target
        for target in targets
        if not any(name == target or name.endswith("." + target) for name in names)
    ]
    if missing:
        raise MethodError(
            f"method.target_modules {missing} match no linear layer of the model; "
            f"available: {', '.join(linear_module_names(model))}"
        )


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.Linear, Conv1D))  # Conv1D: GPT-2 style linears


def _peft(model: torch.nn.Module) -> PeftModel:
    if not isinstance(model, PeftModel):
        raise MethodError(f"expected a LoRA (peft) model, got {type(model).__name__}")
    return model
