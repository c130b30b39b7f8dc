"""Compute per token of a Llama-style decoder, estimated from its config.

The estimate is the one used for model FLOPs utilisation in PaLM (Chowdhery
et al. 2022, Appendix B), refining Kaplan et al. 2020 (Table 1, ``C = 6N``)
with the attention term::

    training:  6 N + 12 L H Q T   FLOPs per token
    forward:   2 N +  4 L H Q T

``N`` counts the weights that take part in matrix multiplies: every layer's
attention (``q``, ``k``, ``v``, ``o``) and gated-MLP (``gate``, ``up``,
``down``) projections, plus the output projection (``vocab x hidden``, shared
or not with the input embedding). The input embedding is a lookup and the
norms are elementwise, so neither counts. A multiply-add is 2 FLOPs; the
backward pass costs twice the forward. ``L`` is the number of layers, ``H``
the query heads, ``Q`` the head size and ``T`` the sequence length: the
``q k^T`` scores and the weighted sum of values take ``2 H Q T`` FLOPs each per
token and layer (the full ``T x T`` product, as kernels compute it, not half
of it for the causal mask).

Parameter-efficient methods (LoRA, prompts, IA3, adapters) freeze the base:
its backward pass still propagates activation gradients through every layer
(``2N``) but computes no weight gradients (the other ``2N``), so training
costs ``4 N + 12 L H Q T`` per token (``frozen_base=True``); the adapters'
own few FLOPs are not counted. The attention term keeps its factor 3: it has
no weights, only activation gradients. Recomputation under gradient
checkpointing is not counted either: these are model FLOPs (MFU), not
hardware FLOPs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_GATED_MLP_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
"""``model_type`` values whose blocks are Llama-shaped (grouped-query attention, gated MLP)."""


def matmul_parameters(config: PretrainedConfig) -> int:
    """``N``: weights that take part in a matrix multiply per token (see the module doc).

    Args:
        config: a transformers config of a Llama-style model (``LlamaConfig`` ...).

    Raises:
        ValueError: a config that is not Llama-shaped or lacks a size.
    """
    shape = _shape(config)
    d, heads, kv, q = shape["hidden"], shape["heads"], shape["kv_heads"], shape["head_dim"]
    attention = d * heads * q + 2 * d * kv * q + heads * q * d
    mlp = 3 * d * shape["intermediate"]
    return shape["layers"] * (attention + mlp) + shape["vocab"] * d


def flops_per_token(
    config: PretrainedConfig,
    seq_len: int | None = None,
    training: bool = True,
    frozen_base: bool = False,
) -> int:
    """FLOPs per token: ``6N + 12LHQT`` for training, ``2N + 4LHQT`` forward only.

    Args:
        config: a transformers config of a Llama-style model.
        seq_len: ``T``, tokens per sequence; None: the config's ``max_position_embeddings``.
        training: forward and backward (True) or forward only (False).
        frozen_base: training with the base weights frozen (parameter-efficient
            methods): no weight gradients, ``4N + 12LHQT``.

    Raises:
        ValueError: a config that is not Llama-shaped or lacks a size, or ``seq_len < 1``.
    """
    shape = _shape(config)
    tokens = shape["context"] if seq_len is None else seq_len
    if tokens < 1:
        raise ValueError(f"seq_len = {tokens}: must be at least 1")
    attention = shape["layers"] * shape["heads"] * shape["head_dim"] * tokens
    passes = 3 if training else 1
    weight_passes = 2 if training and frozen_base else passes
    return weight_passes * 2 * matmul_parameters(config) + passes * 4 * attention


def describe_flops(model: object, seq_len: int, frozen_base: bool = False) -> str:
    """The training FLOPs per token of ``model.config`` for the banner; ``""`` if not Llama-shaped.

    Args:
        model: a transformers model, or a peft model around one.
        seq_len: training sequence length ``T``, in tokens.
        frozen_base: the base weights are frozen (see :func:`flops_per_token`).
    """
    config = getattr(model, "config", None)
    if config is None:
        return ""
    try:
        flops = flops_per_token(config, seq_len, frozen_base=frozen_base)
    except ValueError:
        return ""
    formula = "4N" if frozen_base else "6N"
    return f"{flops / 1e6:,.1f} MFLOPs per token trained ({formula} + 12LHQT, T = {seq_len})"


def _shape(config: PretrainedConfig) -> dict[str, int]:
    model_type = getattr(config, "model_type", None)
    if model_type not in _GATED_MLP_FAMILIES:
        raise ValueError(
            f"FLOPs are estimated for Llama-style models ({', '.join(_GATED_MLP_FAMILIES)}), "
            f"not model_type {model_type!r}"
        )
    keys = {
        "hidden": "hidden_size",
        "layers": "num_hidden_layers",
        "heads": "num_attention_heads",
        "intermediate": "intermediate_size",
        "vocab": "vocab_size",
        "context": "max_position_embeddings",
    }
    shape = {short: _positive(config, key) for short, key in keys.items()}
    kv = getattr(config, "num_key_value_heads", None)
    shape["kv_heads"] = shape["heads"] if kv is None else _positive(config, "num_key_value_heads")
    head_dim = getattr(config, "head_dim", None)
    shape["head_dim"] = (
        shape["hidden"] // shape["heads"] if head_dim is None else _positive(config, "head_dim")
    )
    return shape


def _positive(config: PretrainedConfig, key: str) -> int:
    value = getattr(config, key, None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config.{key} = {value!r}: need a positive integer")
    return value
