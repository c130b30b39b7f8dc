"""Base models, tokenizers, fine-tuning methods and the exchanged trainable state.

The names below import their module on first use (:mod:`fedllm.lazy`), so importing one
submodule (the config reads :mod:`fedllm.model.settings`) does not import
torch and transformers with :mod:`fedllm.model.load`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.lazy import lazy_exports

if TYPE_CHECKING:
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

_HOMES = {
    "SMOLLM2": "load",
    "ModelLoadError": "load",
    "cache_dir": "load",
    "known_names": "load",
    "load_base_model": "load",
    "load_tokenizer": "load",
    "preset_names": "presets",
    "StateMismatchError": "state",
    "count_parameters": "state",
    "get_trainable_state": "state",
    "set_trainable_state": "state",
    "state_nbytes": "state",
    "trainable_names": "state",
    "zeros_like_state": "state",
}
"""Each exported name and the submodule defining it."""

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

__getattr__ = lazy_exports(__name__, _HOMES)
