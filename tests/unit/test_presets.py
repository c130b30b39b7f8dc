"""Scratch presets, architecture overrides and the FLOPs-per-token estimate."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from fedllm.config import Config, ConfigError, ModelConfig, parse_config
from fedllm.federation.runner import _header
from fedllm.federation.setup import prepare
from fedllm.model.flops import describe_flops, flops_per_token, matmul_parameters
from fedllm.model.load import load_base_model
from fedllm.model.presets import (
    SMOLLM2_VOCAB_SIZE,
    llama_config,
    preset_config,
    preset_names,
    preset_spec,
)
from fedllm.model.state import count_parameters

NAMED_SIZES = {"llama-5m": 5e6, "llama-20m": 20e6, "llama-60m": 60e6}


def closed_form_count(
    vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, inter: int, tied: bool
) -> int:
    """Parameters of a Llama decoder without biases, written out by hand."""
    head = hidden // heads
    q, k, v, o = (
        hidden * hidden,
        hidden * kv_heads * head,
        hidden * kv_heads * head,
        hidden * hidden,
    )
    mlp = 3 * hidden * inter  # gate, up, down
    norms = 2 * hidden  # input and post-attention RMSNorm
    embeddings = vocab * hidden * (1 if tied else 2)
    return embeddings + layers * (q + k + v + o + mlp + norms) + hidden  # + final norm


def direct_count(config: LlamaConfig) -> int:
    """Sum of numel over the parameters of the instantiated model (meta: shapes only)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # tied weights appear once


def count_of(config: LlamaConfig) -> int:
    kv = config.num_key_value_heads
    assert kv is not None
    return closed_form_count(
        config.vocab_size,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        kv,
        config.intermediate_size,
        bool(config.tie_word_embeddings),
    )


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("name", preset_names())
def test_preset_count_matches_model_and_closed_form(name: str) -> None:
    config = preset_config(name)
    assert config.vocab_size == SMOLLM2_VOCAB_SIZE
    assert config.tie_word_embeddings
    assert direct_count(config) == count_of(config)


@pytest.mark.parametrize("name", sorted(NAMED_SIZES))
def test_scratch_presets_land_near_their_names(name: str) -> None:
    total = direct_count(preset_config(name))
    assert abs(total - NAMED_SIZES[name]) / NAMED_SIZES[name] < 0.05, total


def test_llama_5m_loads_with_its_count() -> None:
    model = load_base_model(ModelConfig(name="llama-5m"), seed=0)
    # 49152 x 96 embedding + 4 layers of (2 x 96^2 + 2 x 96 x 32 + 3 x 96 x 256 + 2 x 96) + 96
    assert count_parameters(model) == (5_112_672, 5_112_672)
    assert model.config.max_position_embeddings == 512


# ---------------------------------------------------------------- overrides


def test_overrides_apply_to_the_built_model() -> None:
    cfg = parse_config(
        {
            "model": {
                "name": "tiny",
                "num_layers": 3,
                "hidden_size": 96,
                "num_heads": 6,
                "num_kv_heads": 3,
                "intermediate_size": 160,
                "context_length": 128,
                "tie_embeddings": False,
            }
        }
    ).model
    model = load_base_model(cfg, seed=0)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (3, 96, 6)
    assert (c.num_key_value_heads, c.intermediate_size, c.max_position_embeddings) == (3, 160, 128)
    assert not c.tie_word_embeddings
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    expected = closed_form_count(SMOLLM2_VOCAB_SIZE, 96, 3, 6, 3, 160, tied=False)
    assert count_parameters(model)[0] == expected


def test_unset_overrides_keep_the_preset() -> None:
    cfg = parse_config({"model": {"name": "tiny-4l", "num_layers": 1}}).model
    assert cfg.architecture_overrides() == {"num_layers": 1}
    spec = preset_spec("tiny-4l", cfg.architecture_overrides())
    shipped = preset_spec("tiny-4l")
    assert spec.num_layers == 1
    assert (spec.hidden_size, spec.num_heads, spec.intermediate_size) == (
        shipped.hidden_size,
        shipped.num_heads,
        shipped.intermediate_size,
    )


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        (
            {"name": "smollm2-135m", "num_layers": 4},
            ["model.num_layers = 4", "'smollm2-135m' is a pretrained model", "llama-5m"],
        ),
        (
            {"name": "some/hub-model", "tie_embeddings": False},
            ["model.tie_embeddings = False", "pretrained"],
        ),
        (
            {"name": "tiny", "hidden_size": 96, "num_heads": 5},
            ["model.hidden_size = 96 (set)", "model.num_heads = 5 (set)", "divisible"],
        ),
        (
            {"name": "tiny", "num_kv_heads": 3},
            ["model.num_heads = 4 (preset 'tiny')", "model.num_kv_heads = 3 (set)", "divide"],
        ),
        ({"name": "tiny", "hidden_size": 68}, ["model.hidden_size = 68", "head size 17", "even"]),
        ({"name": "tiny", "num_layers": 0}, ["model.num_layers = 0", "greater than or equal"]),
        ({"name": "tiny", "num_layer": 2}, ["model.num_layer is not a known key", "num_layers"]),
    ],
)
def test_bad_overrides_are_clear_errors(model: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"model": model})
    message = str(info.value)
    assert message.startswith("config error:")
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------- FLOPs


def test_flops_by_hand_for_a_small_config() -> None:
    config = llama_config(preset_spec("tiny"), vocab_size=1000)
    # tiny: L = 2, d = 64, H = 4 heads of Q = 16, 2 kv heads, MLP 128; T = 32
    attention = 64 * 64 + 2 * 64 * (2 * 16) + 64 * 64  # q, k, v, o = 12,288
    mlp = 3 * 64 * 128  # 24,576
    n = 2 * (attention + mlp) + 1000 * 64  # 73,728 + 64,000 = 137,728
    assert matmul_parameters(config) == n == 137_728
    assert flops_per_token(config, seq_len=32) == 6 * n + 12 * 2 * 4 * 16 * 32 == 875_520
    assert flops_per_token(config, seq_len=32, training=False) == 2 * n + 4 * 2 * 4 * 16 * 32
    assert flops_per_token(config) == 6 * n + 12 * 2 * 4 * 16 * 256  # T = context length


@pytest.mark.parametrize("tied", [True, False])
def test_flops_equal_torch_flop_counter(tied: bool) -> None:
    """Eager attention makes every matmul visible to torch's FLOP counter."""
    config = llama_config(
        preset_spec("tiny", {"num_kv_heads": 1, "tie_embeddings": tied}), vocab_size=500
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    batch, seq = 2, 24
    ids = torch.randint(0, 500, (batch, seq))
    with FlopCounterMode(display=False) as forward:
        model(input_ids=ids)
    with FlopCounterMode(display=False) as training:
        model(input_ids=ids).logits.sum().backward()
    tokens = batch * seq
    assert forward.get_total_flops() == tokens * flops_per_token(config, seq, training=False)
    assert training.get_total_flops() == tokens * flops_per_token(config, seq)


def test_flops_refuse_other_architectures() -> None:
    gpt2 = GPT2Config(n_layer=2, n_embd=64, n_head=4)
    with pytest.raises(ValueError, match="Llama-style"):
        flops_per_token(gpt2)
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(preset_config("tiny"), seq_len=0)
    assert describe_flops(torch.nn.Linear(2, 2), 64) == ""


def test_banner_shows_parameters_and_flops() -> None:
    config = Config.model_validate(
        {"model": {"name": "tiny"}, "method": {"kind": "full"}, "data": {"seq_len": 64}}
    )
    ws = prepare(config, with_data=False)
    header = _header(ws, config)
    flops = flops_per_token(preset_config("tiny"), 64)
    assert f"{flops / 1e6:,.1f} MFLOPs per token" in header
    assert "T = 64" in header
    assert "3,219,776 of 3,219,776 parameters trainable" in header
    # N: all parameters (tied embedding = output projection) less the 2 x 2 + 1 norms of 64
    assert flops == 6 * (3_219_776 - 5 * 64) + 12 * 2 * 4 * 16 * 64
