"""Fine-tuning methods; importing this package registers every built-in ``method.kind``.

``lora``, ``full``, ``prompt`` (prompt tuning), ``prefix`` (prefix tuning),
``ptuning`` (P-tuning), ``ia3`` and ``adapter`` (bottleneck adapters).
"""

from __future__ import annotations

from fedllm.components import METHODS
from fedllm.model.methods.adapter import AdapterMethod, load_adapter
from fedllm.model.methods.base import Method, MethodError, check_gradient_checkpointing
from fedllm.model.methods.full import FullMethod
from fedllm.model.methods.ia3 import IA3Method
from fedllm.model.methods.lora import LoraMethod
from fedllm.model.methods.prefix import PrefixTuningMethod
from fedllm.model.methods.prompt import PromptTuningMethod
from fedllm.model.methods.ptuning import PTuningMethod


def get_method(kind: str) -> Method:
    """A new instance of the method registered as ``kind`` (e.g. ``method.kind``).

    Raises:
        fedllm.registry.UnknownComponentError: if no method has that name.
    """
    method: Method = METHODS.get(kind)()
    return method


__all__ = [
    "AdapterMethod",
    "FullMethod",
    "IA3Method",
    "LoraMethod",
    "Method",
    "MethodError",
    "PTuningMethod",
    "PrefixTuningMethod",
    "PromptTuningMethod",
    "check_gradient_checkpointing",
    "get_method",
    "load_adapter",
]
