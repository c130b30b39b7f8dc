"""Base models, tokenizers, fine-tuning methods and the exchanged trainable state."""

from __future__ import annotations

from fedllm.model.load import (
    SMOLLM2,
    ModelLoadError,
    cache_dir,
    known_names,
    load_base_model,
    load_tokenizer,
)
from fedllm.model.presets import preset_names
from fedllm.model.state import (
    StateMismatchError,
    count_parameters,
    get_trainable_state,
    set_trainable_state,
    state_nbytes,
    trainable_names,
    zeros_like_state,
)

__all__ = [
    "SMOLLM2",
    "ModelLoadError",
    "StateMismatchError",
    "cache_dir",
    "count_parameters",
    "get_trainable_state",
    "known_names",
    "load_base_model",
    "load_tokenizer",
    "preset_names",
    "set_trainable_state",
    "state_nbytes",
    "trainable_names",
    "zeros_like_state",
]
