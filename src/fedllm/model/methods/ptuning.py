"""P-tuning: virtual-token embeddings produced by a trained prompt encoder (an MLP)."""

from __future__ import annotations

from peft import PeftConfig, PromptEncoderConfig
from transformers import PreTrainedModel

from fedllm.components import METHODS
from fedllm.model.methods.base import hidden_size
from fedllm.model.methods.prompt_learning import PromptLearningMethod
from fedllm.model.settings import MethodConfig


@METHODS.register("ptuning")
class PTuningMethod(PromptLearningMethod):
    """``method.num_virtual_tokens`` tokens through an MLP encoder (peft ``PromptEncoderConfig``).

    Trainable and exchanged: the encoder's input embedding
    (``num_virtual_tokens x hidden``) and its three linear layers
    (hidden -> ``encoder_hidden_size`` -> ``encoder_hidden_size`` -> hidden).
    The peft export holds the encoder's output (the virtual-token embeddings),
    not the encoder: it reproduces the model, but cannot resume training the
    encoder. Logits get ``num_virtual_tokens`` extra leading positions.
    """

    name = "ptuning"

    def peft_config(self, model: PreTrainedModel, cfg: MethodConfig) -> PeftConfig:
        """P-tuning with an MLP encoder ``encoder_hidden_size`` wide (default: hidden size)."""
        return PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=cfg.num_virtual_tokens,
            encoder_reparameterization_type="MLP",
            encoder_hidden_size=cfg.encoder_hidden_size or hidden_size(model),
        )
