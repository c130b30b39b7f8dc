"""Bottleneck adapters (Pfeiffer): only the adapters after each MLP block are trained.

The export is a directory with ``bottleneck_adapter.safetensors`` (the adapter
weights, keyed by model module path) and ``bottleneck_adapter.json`` (size,
placement, adapted modules, base model); :func:`load_adapter` puts it onto a
fresh base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from fedllm.components import METHODS
from fedllm.model.methods import bottleneck
from fedllm.model.methods.base import MethodError, hidden_size
from fedllm.model.settings import MethodConfig

WEIGHTS_FILE = "bottleneck_adapter.safetensors"
CONFIG_FILE = "bottleneck_adapter.json"
_FORMAT = "fedllm-bottleneck-adapter"
_VERSION = 1


@METHODS.register("adapter")
class AdapterMethod:
    """Freeze the base model and add a ``method.adapter_size`` bottleneck after each MLP.

    Trainable and exchanged, per decoder layer: ``down`` (``size x hidden`` +
    ``size``) and ``up`` (``hidden x size`` + ``hidden``), i.e.
    ``layers x (2 x hidden x size + hidden + size)`` in all. The model is the
    base transformers model itself, adapted in place.
    """

    name = "adapter"

    def apply(self, model: PreTrainedModel, cfg: MethodConfig) -> torch.nn.Module:
        """Freeze ``model``, attach the adapters (trainable) and return ``model``.

        Raises:
            MethodError: if the model has no ``mlp`` modules or is already adapted.
        """
        model.requires_grad_(False)
        names = bottleneck.mlp_module_names(model)
        bottleneck.attach(model, names, hidden_size(model), cfg.adapter_size)
        return model

    def export(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Save the adapters so that :func:`load_adapter` reproduces ``model``."""
        save_adapter(model, out_dir)

    def merged(self, model: torch.nn.Module) -> PreTrainedModel:
        """Always raises: a ReLU bottleneck cannot be folded into linear weights.

        Raises:
            MethodError: saying to export without ``--merge`` and load with load_adapter.
        """
        raise MethodError(
            "method.kind = 'adapter' cannot be merged into the base weights: the bottleneck "
            "is nonlinear (ReLU). Export without --merge and load the result with "
            "fedllm.model.methods.adapter.load_adapter(base_model, directory)"
        )


def save_adapter(model: torch.nn.Module, out_dir: Path) -> None:
    """Write ``model``'s adapters into ``out_dir`` (created if needed).

    Raises:
        MethodError: if ``model`` has no adapters.
    """
    found = bottleneck.adapters(model)
    if not found:
        raise MethodError(f"expected a model with bottleneck adapters, got {type(model).__name__}")
    first = next(iter(found.values()))
    tensors = {
        f"{name}.{bottleneck.CHILD}.{key}": value.detach().contiguous()
        for name, adapter in found.items()
        for key, value in adapter.state_dict().items()
    }
    config = {
        "format": _FORMAT,
        "version": _VERSION,
        "base_model_name_or_path": str(getattr(model, "name_or_path", "")),
        "hidden_size": first.down.in_features,
        "adapter_size": first.down.out_features,
        "activation": "relu",
        "placement": "output of each listed module (Pfeiffer: after the MLP), residual",
        "modules": list(found),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load_adapter(model: PreTrainedModel, directory: str | Path) -> PreTrainedModel:
    """Attach the adapters saved in ``directory`` to ``model`` (in place), for inference.

    The returned model is ``model`` in eval mode with every parameter frozen;
    its logits equal those of the model that was exported.

    Raises:
        MethodError: if the directory is not an adapter export, or its modules,
            sizes or tensors do not fit ``model``.
    """
    directory = Path(directory)
    config = _read_config(directory)
    if config["hidden_size"] != hidden_size(model):
        raise MethodError(
            f"{directory} holds adapters for hidden size {config['hidden_size']}, "
            f"the model has {hidden_size(model)}"
        )
    bottleneck.attach(model, list(config["modules"]), config["hidden_size"], config["adapter_size"])
    saved = load_file(str(directory / WEIGHTS_FILE))
    expected = {
        f"{name}.{bottleneck.CHILD}.{key}": value
        for name, adapter in bottleneck.adapters(model).items()
        for key, value in adapter.state_dict().items()
    }
    if set(saved) != set(expected):
        raise MethodError(
            f"{directory / WEIGHTS_FILE} does not match its config: "
            f"missing {sorted(set(expected) - set(saved))[:3]}, "
            f"unexpected {sorted(set(saved) - set(expected))[:3]}"
        )
    with torch.no_grad():
        for key, target in expected.items():
            if saved[key].shape != target.shape:
                raise MethodError(f"{key}: saved shape {tuple(saved[key].shape)} != {target.shape}")
            target.copy_(saved[key])
    model.requires_grad_(False)
    model.train(False)
    return model


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise MethodError(
            f"{directory} is not a bottleneck adapter export "
            f"(needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    config: dict[str, Any] = json.loads(path.read_text())
    if config.get("format") != _FORMAT or config.get("version") != _VERSION:
        raise MethodError(f"{path} is not a {_FORMAT} version {_VERSION} config")
    return config
