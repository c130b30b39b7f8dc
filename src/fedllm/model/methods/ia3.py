"""IA3: trained vectors that rescale chosen activations; the base weights stay frozen."""

from __future__ import annotations

from peft import IA3Config, PeftConfig
from transformers import PreTrainedModel

from fedllm.components import METHODS
from fedllm.model.methods.lora import check_target_modules
from fedllm.model.methods.peft_method import PeftMethod
from fedllm.model.settings import MethodConfig


@METHODS.register("ia3")
class IA3Method(PeftMethod):
    """Rescale ``method.ia3_target_modules`` (peft ``IA3Config``).

    Each target gets one trained vector, initialised to ones (the model starts
    unchanged): attention projections are rescaled at their output (a vector of
    their output size), ``ia3_feedforward_modules`` at their input (their input
    size). :meth:`merged` folds the vectors into the weights.
    """

    name = "ia3"

    def peft_config(self, model: PreTrainedModel, cfg: MethodConfig) -> PeftConfig:
        """IA3 on ``cfg.ia3_target_modules``.

        Raises:
            MethodError: if a target matches no linear layer of ``model``.
        """
        check_target_modules(model, cfg.ia3_target_modules, key="method.ia3_target_modules")
        return IA3Config(
            task_type="CAUSAL_LM",
            target_modules=list(cfg.ia3_target_modules),
            feedforward_modules=list(cfg.ia3_feedforward_modules),
        )
