"""Bottleneck adapter layers and their insertion after a model's MLP blocks (Pfeiffer).

An adapter maps the MLP block's output ``h`` (``hidden`` features per token) to
``h + up(relu(down(h)))``, with ``down: hidden -> size`` and ``up: size ->
hidden``. ``up`` starts at zero, so a freshly adapted model computes exactly
what the base model did. The adapter is registered as the child ``adapter`` of
the MLP module and applied by a forward hook: the base model's own parameter
names do not change.
"""

from __future__ import annotations

import torch

from fedllm.model.methods.base import MethodError

CHILD = "adapter"
"""Name of the adapter submodule inside each adapted MLP module."""

_MLP = "mlp"


class Bottleneck(torch.nn.Module):
    """A residual bottleneck: ``h + up(relu(down(h)))``, the identity at initialisation.

    Parameters are float32 whatever the model's dtype (like peft's adapters);
    the input is cast to them and the output back to the input's dtype.

    Args:
        hidden: features per token of the adapted output.
        size: bottleneck width.
    """

    def __init__(self, hidden: int, size: int) -> None:
        super().__init__()
        self.down = torch.nn.Linear(hidden, size)
        self.up = torch.nn.Linear(size, hidden)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.to(self.down.weight.dtype)
        delta: torch.Tensor = self.up(torch.relu(self.down(x)))
        return hidden_states + delta.to(hidden_states.dtype)


def mlp_module_names(model: torch.nn.Module) -> list[str]:
    """Names of the modules called ``mlp`` (one per decoder layer in Llama-like models).

    Raises:
        MethodError: if the model has none.
    """
    names = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] == _MLP]
    if not names:
        raise MethodError(
            f"{type(model).__name__} has no module named {_MLP!r} to put adapters after"
        )
    return names


def attach(model: torch.nn.Module, module_names: list[str], hidden: int, size: int) -> None:
    """Put a new :class:`Bottleneck` after each module in ``module_names`` (in place).

    The adapters land on the device of the module they follow.

    Raises:
        MethodError: if a module is missing or already adapted.
    """
    for name in module_names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise MethodError(f"the model has no module {name!r} to adapt") from None
        if hasattr(module, CHILD):
            raise MethodError(f"module {name!r} already has an adapter")
        device = next(module.parameters()).device
        module.add_module(CHILD, Bottleneck(hidden, size).to(device))
        module.register_forward_hook(_apply_adapter)


def adapters(model: torch.nn.Module) -> dict[str, Bottleneck]:
    """The adapters of ``model`` by the name of the module they follow, in model order."""
    found = {}
    for name, module in model.named_modules():
        child = getattr(module, CHILD, None)
        if isinstance(child, Bottleneck):
            found[name] = child
    return found


def _apply_adapter(
    module: torch.nn.Module, args: tuple[object, ...], output: object
) -> torch.Tensor:
    """Forward hook: the module's output passed through its adapter."""
    del args
    if not isinstance(output, torch.Tensor):
        raise MethodError(
            f"{type(module).__name__} returns a {type(output).__name__}; "
            "adapters need a module that returns one tensor"
        )
    adapter = getattr(module, CHILD)
    result: torch.Tensor = adapter(output)
    return result
