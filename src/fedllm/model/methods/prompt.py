"""Prompt tuning: trained embeddings of virtual tokens prepended to every input."""

from __future__ import annotations

from peft import PeftConfig, PromptTuningConfig, PromptTuningInit
from transformers import PreTrainedModel

from fedllm.components import METHODS
from fedllm.model.load import tokenizer_source
from fedllm.model.methods.prompt_learning import PromptLearningMethod
from fedllm.model.settings import MethodConfig

_INITS = {
    "vocab": PromptTuningInit.SAMPLE_VOCAB,
    "random": PromptTuningInit.RANDOM,
    "text": PromptTuningInit.TEXT,
}


@METHODS.register("prompt")
class PromptTuningMethod(PromptLearningMethod):
    """``method.num_virtual_tokens`` soft tokens (peft ``PromptTuningConfig``).

    The only trainable tensor is the ``num_virtual_tokens x hidden`` prompt
    embedding; the model's logits get ``num_virtual_tokens`` extra leading
    positions when it is called without labels.
    """

    name = "prompt"

    def peft_config(self, model: PreTrainedModel, cfg: MethodConfig) -> PeftConfig:
        """Prompt tuning initialised as ``cfg.prompt_init`` says.

        With ``prompt_init = "text"`` peft tokenizes ``prompt_init_text`` with the
        model's tokenizer (a local directory for the shipped model and the tiny
        presets) and repeats or cuts the ids to ``num_virtual_tokens``.

        Raises:
            fedllm.model.load.ModelLoadError: if the tokenizer cannot be located.
        """
        text = cfg.prompt_init == "text"
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init=_INITS[cfg.prompt_init],
            prompt_tuning_init_text=cfg.prompt_init_text if text else None,
            tokenizer_name_or_path=tokenizer_source(str(model.name_or_path)) if text else None,
        )
