"""Prefix tuning: a trained key/value prefix of virtual tokens in every attention layer."""

from __future__ import annotations

import torch
from peft import PeftConfig, PrefixTuningConfig
from transformers import PreTrainedModel

from fedllm.components import METHODS
from fedllm.model.methods.base import MethodError, hidden_size
from fedllm.model.methods.prefix_init import init_token_ids, prefix_from_tokens
from fedllm.model.methods.prompt_learning import PromptLearningMethod
from fedllm.model.settings import MethodConfig


@METHODS.register("prefix")
class PrefixTuningMethod(PromptLearningMethod):
    """``method.num_virtual_tokens`` keys and values per layer (peft ``PrefixTuningConfig``).

    Trainable: the prefix itself (``num_virtual_tokens x layers x 2 x kv_dim``,
    where ``kv_dim`` = key/value heads x head size), or with
    ``method.prefix_projection`` a smaller embedding and the two-layer MLP that
    produces the prefix from it. The export holds the prefix the MLP produces.
    The sequence is not lengthened: logits match the input positions.
    """

    name = "prefix"
    checkpointing_conflict = (
        "prefix tuning feeds its prefix as a key/value cache, which transformers drops "
        "under activation checkpointing"
    )

    def apply(self, model: PreTrainedModel, cfg: MethodConfig) -> torch.nn.Module:
        """Wrap ``model`` and set the starting prefix from ``cfg.prompt_init``.

        Without ``prefix_projection``, ``"vocab"`` and ``"text"`` start from the
        keys and values of random vocabulary tokens or of ``prompt_init_text``
        in the base model (see :mod:`fedllm.model.methods.prefix_init`);
        ``"random"`` keeps peft's N(0, 1) start. With the projection the MLP
        produces the prefix and starts as peft initialises it.

        Raises:
            MethodError: if the model's cache does not have the prefix's layout.
        """
        peft_model = super().apply(model, cfg)
        if cfg.prefix_projection or cfg.prompt_init == "random":
            return peft_model
        text = cfg.prompt_init_text if cfg.prompt_init == "text" else None
        ids = init_token_ids(model, cfg.num_virtual_tokens, text)
        start = prefix_from_tokens(model, ids)
        weight = peft_model.get_parameter("prompt_encoder.default.embedding.weight")
        if start.shape != weight.shape:
            raise MethodError(
                f"this model's key/value cache {tuple(start.shape)} does not match the "
                f"prefix {tuple(weight.shape)}; use method.prompt_init = 'random'"
            )
        with torch.no_grad():
            weight.copy_(start)
        return peft_model

    def peft_config(self, model: PreTrainedModel, cfg: MethodConfig) -> PeftConfig:
        """Prefix tuning; the projection is ``encoder_hidden_size`` wide (default: hidden size).

        Raises:
            MethodError: if ``model`` already has activation checkpointing on.
        """
        if any(getattr(module, "gradient_checkpointing", False) for module in model.modules()):
            raise MethodError(
                f"method.kind = 'prefix' does not work with activation checkpointing: "
                f"{self.checkpointing_conflict}"
            )
        return PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=cfg.num_virtual_tokens,
            prefix_projection=cfg.prefix_projection,
            encoder_hidden_size=cfg.encoder_hidden_size or hidden_size(model),
        )
