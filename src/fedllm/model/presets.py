"""Randomly initialised Llama models: tiny ones for tests, small ones to pre-train.

Every preset uses the SmolLM2 tokenizer by default: same vocabulary size and
special-token ids, so data prepared for ``smollm2-135m`` works unchanged with
a preset. ``llama-5m``, ``llama-20m`` and ``llama-60m`` are named by their
approximate total parameter count with that 49,152-token vocabulary and tied
embeddings (the embedding matrix is most of the two smaller ones); with a
smaller trained tokenizer (``model.tokenizer = "bpe"``) they are smaller.

A preset's shape can be overridden field by field (``model.num_layers`` ...);
:func:`preset_spec` applies and checks the overrides.

transformers is imported only where a config is built, so that validating a
run config (which checks overrides here) stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig

SMOLLM2_VOCAB_SIZE = 49152
"""Vocabulary size of the SmolLM2 tokenizer."""
SMOLLM2_BOS_ID = 1
"""``<|im_start|>``, SmolLM2's begin-of-sequence token."""
SMOLLM2_EOS_ID = 2
"""``<|im_end|>``, SmolLM2's end-of-sequence token (also its padding token)."""


@dataclass(frozen=True)
class Preset:
    """The shape of one randomly initialised Llama model.

    Attributes:
        hidden_size: width of the residual stream.
        num_layers: transformer blocks.
        num_heads: query heads (head size = hidden_size / num_heads).
        num_kv_heads: key/value heads (grouped-query attention); divides num_heads.
        intermediate_size: width of the gated MLP.
        context_length: most positions (``max_position_embeddings``), in tokens.
        tie_embeddings: the output projection shares the input embedding matrix.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    context_length: int = 256
    tie_embeddings: bool = True


ARCHITECTURE_KEYS = tuple(f.name for f in fields(Preset))
"""The fields of :class:`Preset`, which are also the override keys in ``[model]``."""

_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128
    ),
    "tiny-4l": Preset(
        hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256
    ),
    "llama-5m": Preset(  # 5,112,672 parameters (4,718,592 of them the embedding)
        hidden_size=96,
        num_layers=4,
        num_heads=3,
        num_kv_heads=1,
        intermediate_size=256,
        context_length=512,
    ),
    "llama-20m": Preset(  # 19,961,088 parameters
        hidden_size=256,
        num_layers=10,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=704,
        context_length=1024,
    ),
    "llama-60m": Preset(  # 59,780,608 parameters
        hidden_size=512,
        num_layers=11,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=1536,
        context_length=1024,
    ),
}


def preset_names() -> list[str]:
    """Names of the presets, sorted."""
    return sorted(_PRESETS)


def is_preset(name: str) -> bool:
    """Whether ``name`` is a preset."""
    return name in _PRESETS


def preset_spec(name: str, overrides: Mapping[str, int | bool] | None = None) -> Preset:
    """The shape of preset ``name`` with ``overrides`` (keys of :data:`ARCHITECTURE_KEYS`).

    Raises:
        KeyError: if ``name`` is not a preset.
        ValueError: an unknown override key, or a shape that cannot be built (naming
            the ``model.*`` keys involved and what would be valid).
    """
    try:
        spec = _PRESETS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a preset; choose one of {preset_names()}") from None
    changes: dict[str, Any] = dict(overrides or {})
    unknown = sorted(set(changes) - set(ARCHITECTURE_KEYS))
    if unknown:
        raise ValueError(
            f"unknown architecture key(s) {unknown}; valid: {', '.join(ARCHITECTURE_KEYS)}"
        )
    spec = replace(spec, **changes)
    _check_shape(name, spec, changes)
    return spec


def llama_config(
    spec: Preset,
    vocab_size: int = SMOLLM2_VOCAB_SIZE,
    bos_id: int = SMOLLM2_BOS_ID,
    eos_id: int = SMOLLM2_EOS_ID,
    pad_id: int = SMOLLM2_EOS_ID,
) -> LlamaConfig:
    """The transformers config of shape ``spec`` over a ``vocab_size``-token vocabulary."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.context_length,
        tie_word_embeddings=spec.tie_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def preset_config(name: str) -> LlamaConfig:
    """The transformers config of preset ``name`` as shipped (SmolLM2 vocabulary).

    Raises:
        KeyError: if ``name`` is not a preset.
    """
    return llama_config(preset_spec(name))


def _check_shape(name: str, spec: Preset, overrides: Mapping[str, int | bool]) -> None:
    """Refuse sizes that LlamaForCausalLM cannot build, naming where each value came from."""

    def show(key: str) -> str:
        origin = "set" if key in overrides else f"preset {name!r}"
        return f"model.{key} = {getattr(spec, key)} ({origin})"

    for key in ARCHITECTURE_KEYS:
        value = getattr(spec, key)
        if key != "tie_embeddings" and (isinstance(value, bool) or value < 1):
            raise ValueError(f"{show(key)} must be a positive integer")
    if spec.hidden_size % spec.num_heads:
        raise ValueError(
            f"{show('hidden_size')} is not divisible by {show('num_heads')}; the head size "
            "is hidden_size / num_heads, so choose hidden_size as a multiple of num_heads"
        )
    if (spec.hidden_size // spec.num_heads) % 2:
        raise ValueError(
            f"{show('hidden_size')} / {show('num_heads')} gives head size "
            f"{spec.hidden_size // spec.num_heads}, which is odd; rotary embeddings need an "
            "even head size"
        )
    if spec.num_heads % spec.num_kv_heads:
        raise ValueError(
            f"{show('num_heads')} is not a multiple of {show('num_kv_heads')}; each key/value "
            "head serves a whole group of query heads, so num_kv_heads must divide num_heads"
        )
