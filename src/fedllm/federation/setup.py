"""Everything a run needs in memory: tokenizer, data, the one model, its method."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from fedllm.components import METHODS, load_builtin
from fedllm.config import Config, ConfigError
from fedllm.data import FederatedData
from fedllm.data.apart import Pending
from fedllm.data.public import PublicData
from fedllm.federation.early import RunData, start_run_data
from fedllm.model.device import place_model, resolve_device, resolved_dtype
from fedllm.model.load import load_base_model, load_tokenizer
from fedllm.model.methods.base import Method, check_gradient_checkpointing
from fedllm.model.state import get_trainable_state
from fedllm.seeding import derive_seed
from fedllm.types import Params


@dataclass
class Workspace:
    """The loaded pieces of a run.

    Attributes:
        config: the resolved configuration.
        tokenizer: the model's tokenizer (with a pad token).
        model: the single trainable model (base + method).
        method: the method that made ``model`` trainable and exports it.
        initial: the trainable state before any training (a copy).
        data: the federation's data, or None when only the model was asked for.
        public: the public corpus (``[public]``), or None when there is none or
            only the model was asked for.
    """

    config: Config
    tokenizer: Any
    model: torch.nn.Module
    method: Method
    initial: Params
    data: FederatedData | None
    public: PublicData | None = None

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)


def prepare(
    config: Config, with_data: bool = True, started: Pending[RunData] | None = None
) -> Workspace:
    """Load the tokenizer, the data (optional), the base model and apply the method.

    The tokenizer and the data are built in a forked child (``started`` if the caller
    started it, as ``fedllm run`` does before its imports; see
    :mod:`fedllm.federation.early`) while this process imports the training stack; they
    are waited for, and the cohort checked against the data, before the model loads.
    The method's initialisation (e.g. LoRA's A matrices) is seeded from the run
    seed without touching the global RNG.

    Raises:
        MethodError: if the method cannot be applied to the model, or cannot
            train with ``client.gradient_checkpointing``.
        DeviceError: ``run.device``, ``model.device_map``, ``client.fp16`` or
            ``client.offload`` asks for a GPU that is not there.
    """
    pending = (started or start_run_data(config)) if with_data else None
    with pending or nullcontext():  # a check failing below stops the build
        load_builtin()
        if config.run.threads is not None:
            torch.set_num_threads(config.run.threads)
        method: Method = METHODS.get(config.method.kind)()
        if config.client.gradient_checkpointing:
            check_gradient_checkpointing(method)  # before anything slow is loaded
        device = resolve_device(config)  # a missing GPU fails here, before anything slow
        config = resolved_dtype(config, device)
        built = pending.result() if pending is not None else None
    if built is None:
        tokenizer, data, public = load_tokenizer(config.model), None, None
    else:
        tokenizer, data, public = built.tokenizer, built.data, built.public
        check_cohort(config, built.data)  # before the model loads
    base = load_base_model(config.model, config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "method-init"))
        model = method.apply(base, config.method)
    place_model(model, device, config.model.device_map)
    if config.client.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    initial = get_trainable_state(model)
    return Workspace(config, tokenizer, model, method, initial, data, public)


def check_cohort(config: Config, data: FederatedData) -> None:
    """Refuse a round cohort larger than the federation (before the model loads).

    Raises:
        ConfigError: ``server.clients_per_round`` exceeds the number of clients.
    """
    wanted, have = config.server.clients_per_round, len(data.clients)
    if wanted > have:
        dropped = f" ({len(data.dropped)} dropped for lack of data)" if data.dropped else ""
        raise ConfigError(
            f"config error: server.clients_per_round = {wanted}, but the federation has "
            f"{have} clients{dropped}; set server.clients_per_round to at most {have}"
        )


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in backward; inputs need grads when the embeddings are frozen."""
    inner: Any = getattr(model, "get_base_model", lambda: model)()
    options = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.24
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    if hasattr(inner, "enable_input_require_grads"):
        inner.enable_input_require_grads()
