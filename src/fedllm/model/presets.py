"""Tiny randomly initialised Llama models for tests and quick runs.

They share the SmolLM2 tokenizer: same vocabulary size and special-token ids,
so data prepared for ``smollm2-135m`` works unchanged with a preset.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig

SMOLLM2_VOCAB_SIZE = 49152
"""Vocabulary size of the SmolLM2 tokenizer."""
SMOLLM2_BOS_ID = 1
"""``<|im_start|>``, SmolLM2's begin-of-sequence token."""
SMOLLM2_EOS_ID = 2
"""``<|im_end|>``, SmolLM2's end-of-sequence token (also its padding token)."""


@dataclass(frozen=True)
class Preset:
    """The shape of one tiny Llama model."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int = 256


_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128
    ),
    "tiny-4l": Preset(
        hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256
    ),
}


def preset_names() -> list[str]:
    """Names of the tiny presets, sorted."""
    return sorted(_PRESETS)


def is_preset(name: str) -> bool:
    """Whether ``name`` is a tiny preset."""
    return name in _PRESETS


def preset_config(name: str) -> LlamaConfig:
    """The transformers config of preset ``name`` (tied embeddings, SmolLM2 vocabulary).

    Raises:
        KeyError: if ``name`` is not a preset.
    """
    try:
        spec = _PRESETS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a tiny preset; choose one of {preset_names()}") from None
    return LlamaConfig(
        vocab_size=SMOLLM2_VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=SMOLLM2_BOS_ID,
        eos_token_id=SMOLLM2_EOS_ID,
        pad_token_id=SMOLLM2_EOS_ID,
    )
