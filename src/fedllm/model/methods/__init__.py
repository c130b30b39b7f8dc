"""Fine-tuning methods; importing this package registers ``lora`` and ``full``."""

from __future__ import annotations

from fedllm.components import METHODS
from fedllm.model.methods.base import Method, MethodError
from fedllm.model.methods.full import FullMethod
from fedllm.model.methods.lora import LoraMethod


def get_method(kind: str) -> Method:
    """A new instance of the method registered as ``kind`` (e.g. ``method.kind``).

    Raises:
        fedllm.registry.UnknownComponentError: if no method has that name.
    """
    method: Method = METHODS.get(kind)()
    return method


__all__ = ["FullMethod", "LoraMethod", "Method", "MethodError", "get_method"]
