"""LoRA: low-rank adapters on chosen linear layers; only the adapters are trained."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from peft import LoraConfig, PeftConfig
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from fedllm.components import METHODS
from fedllm.model.methods.base import MethodError
from fedllm.model.methods.peft_method import PeftMethod
from fedllm.model.settings import MethodConfig


@METHODS.register("lora")
class LoraMethod(PeftMethod):
    """Wrap ``method.target_modules`` with rank-``r`` LoRA adapters (peft).

    Only ``lora_A`` / ``lora_B`` weights are trainable; :meth:`merged` folds
    them into the base weights.
    """

    name = "lora"

    def peft_config(self, model: PreTrainedModel, cfg: MethodConfig) -> PeftConfig:
        """LoRA on ``cfg.target_modules`` with rank ``r``, scale ``alpha / r``.

        Raises:
            MethodError: if a target module matches no linear layer of ``model``.
        """
        check_target_modules(model, cfg.target_modules)
        return LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft accepts a float scale
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        )


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct last name components of the linear modules of ``model``, sorted."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if _is_linear(mod)}
    )


def check_target_modules(
    model: torch.nn.Module, targets: list[str], key: str = "method.target_modules"
) -> None:
    """Raise if a target matches no linear module (peft's rule: full name or dotted suffix).

    Args:
        model: the model the targets must be found in.
        targets: module names (or dotted suffixes).
        key: the config key the targets came from, for the message.

    Raises:
        MethodError: naming the missing targets and the available linear modules.
    """
    if not targets:
        raise MethodError(f"{key} is empty; at least one module is needed")
    names = [name for name, mod in model.named_modules() if _is_linear(mod)]
    missing = [
        target
        for target in targets
        if not any(name == target or name.endswith("." + target) for name in names)
    ]
    if missing:
        raise MethodError(
            f"{key} {missing} match no linear layer of the model; "
            f"available: {', '.join(linear_module_names(model))}"
        )


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.Linear, Conv1D))  # Conv1D: GPT-2 style linears


def rank_axis(name: str) -> int | None:
    """The axis of a tensor that indexes LoRA rank components, or None if it has none.

    peft names the down-projection ``...lora_A.<adapter>.weight`` (``[r, in]``:
    rank along rows) and the up-projection ``...lora_B.<adapter>.weight``
    (``[out, r]``: rank along columns).
    """
    if ".lora_A." in name:
        return 0
    if ".lora_B." in name:
        return 1
    return None


def lora_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """``(lora_A name, lora_B name)`` of every adapted layer among ``names``, in the
    order of the ``lora_A`` names.

    Raises:
        ValueError: a ``lora_A`` without its ``lora_B`` or the other way round.
    """
    names = list(names)
    b_names = {n for n in names if rank_axis(n) == 1}
    pairs = []
    for a_name in (n for n in names if rank_axis(n) == 0):
        head, _, tail = a_name.rpartition(".lora_A.")
        b_name = f"{head}.lora_B.{tail}"
        if b_name not in b_names:
            raise ValueError(f"LoRA tensor {a_name!r} has no {b_name!r} beside it")
        b_names.discard(b_name)
        pairs.append((a_name, b_name))
    if b_names:
        raise ValueError(f"LoRA tensor {sorted(b_names)[0]!r} has no lora_A beside it")
    return pairs
