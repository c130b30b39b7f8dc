"""The fine-tuning methods: what is trainable, export formats, merging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel

from fedllm.components import METHODS
from fedllm.config import MethodConfig, ModelConfig
from fedllm.model.load import load_base_model
from fedllm.model.methods import FullMethod, LoraMethod, Method, MethodError, get_method
from fedllm.model.methods.lora import linear_module_names
from fedllm.model.state import count_parameters, trainable_names

TOKENS = torch.tensor([[1, 504, 1122, 4944, 253, 37, 2]])


def _tiny(seed: int = 0) -> PreTrainedModel:
    return load_base_model(ModelConfig(name="tiny"), seed=seed)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=TOKENS).logits
    return out


def _perturb(model: torch.nn.Module, seed: int = 5) -> None:
    """Move every trainable parameter, so that no method is the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))


def test_registry_builds_methods() -> None:
    assert {"lora", "full"} <= set(METHODS.names())
    lora: Method = get_method("lora")
    full: Method = METHODS.get("full")()
    assert isinstance(lora, LoraMethod) and lora.name == "lora"
    assert isinstance(full, FullMethod) and full.name == "full"


def test_lora_trains_only_adapters() -> None:
    base = _tiny()
    cfg = MethodConfig(r=4, target_modules=["q_proj", "v_proj"])
    model = get_method("lora").apply(base, cfg)
    names = trainable_names(model)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    # r * (in + out) per wrapped layer: q_proj 64 -> 64, v_proj 64 -> 2 kv heads x 16 = 32.
    layers = base.config.num_hidden_layers
    expected = layers * (4 * (64 + 64) + 4 * (64 + 32))
    total, trainable = count_parameters(model)
    assert trainable == expected
    assert total == 3_219_776 + expected


def test_lora_adapter_names_the_fedllm_model() -> None:
    model = get_method("lora").apply(_tiny(), MethodConfig())
    assert isinstance(model, PeftModel)
    assert model.peft_config["default"].base_model_name_or_path == "tiny"


def test_lora_unknown_target_lists_linear_modules() -> None:
    model = _tiny()
    with pytest.raises(MethodError) as info:
        get_method("lora").apply(model, MethodConfig(target_modules=["q_proj", "qkv"]))
    message = str(info.value)
    assert "'qkv'" in message and "'q_proj'" not in message.split("available")[0]
    for name in ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]:
        assert name in message
    assert linear_module_names(model) == sorted(
        ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"]
    )


def test_full_trains_everything() -> None:
    model = get_method("full").apply(_tiny(), MethodConfig(kind="full"))
    total, trainable = count_parameters(model)
    assert trainable == total == 3_219_776


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")
def test_lora_export_reloads_onto_fresh_base(tmp_path: Path) -> None:
    method = get_method("lora")
    model = method.apply(_tiny(seed=1), MethodConfig(r=4, dropout=0.1))
    _perturb(model)
    model.eval()
    method.export(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    reloaded = PeftModel.from_pretrained(_tiny(seed=1), tmp_path / "adapter")
    reloaded.eval()
    assert torch.equal(_logits(reloaded), _logits(model))
    assert not torch.allclose(_logits(_tiny(seed=1)), _logits(model))


def test_full_export_reloads(tmp_path: Path) -> None:
    method = get_method("full")
    model = method.apply(_tiny(seed=1), MethodConfig(kind="full"))
    _perturb(model)
    method.export(model, tmp_path / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert torch.equal(_logits(reloaded), _logits(model))


def test_lora_merged_matches_and_leaves_model_intact() -> None:
    method = get_method("lora")
    model = method.apply(_tiny(), MethodConfig(r=4, target_modules=["q_proj", "o_proj", "up_proj"]))
    _perturb(model)
    expected = _logits(model)
    merged = method.merged(model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(_logits(model), expected)  # the trained model is unchanged
    assert trainable_names(model)


def test_full_merged_is_the_model_itself() -> None:
    model = _tiny()
    assert get_method("full").merged(model) is model


def test_wrong_model_kind_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MethodError, match="peft"):
        get_method("lora").export(_tiny(), tmp_path)
    with pytest.raises(MethodError, match="transformers model"):
        get_method("full").merged(torch.nn.Linear(2, 2))


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")
def test_lora_scales_its_update_by_alpha_over_r_in_training_and_in_the_export(
    tmp_path: Path,
) -> None:
    """A LoRA layer adds (alpha / r) B A x to the base output (Hu et al. 2021, eq. 3 with
    the scale of section 4.1), checked against that formula by hand on a q_proj of
    alpha = 8, r = 4 (scale 2, not 1), and the export records lora_alpha = alpha.
    Reloading compares the model with itself, so only this pins the scale."""
    cfg = MethodConfig(r=4, alpha=8.0, target_modules=["q_proj"])
    model = get_method("lora").apply(_tiny(seed=2), cfg)
    layer = next(m for name, m in model.named_modules() if name.endswith("0.self_attn.q_proj"))
    assert layer.scaling["default"] == 2.0
    gen = torch.Generator().manual_seed(3)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        a.copy_(torch.randn(a.shape, generator=gen))
        b.copy_(torch.randn(b.shape, generator=gen))
        x = torch.randn(2, a.shape[1], generator=gen)
        by_hand = layer.base_layer(x) + (8.0 / 4) * (x @ a.T @ b.T)
        layer.eval()
        assert torch.allclose(layer(x), by_hand, atol=1e-5)
    get_method("lora").export(model, tmp_path / "adapter")
    exported = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert exported["lora_alpha"] == 8.0 and exported["r"] == 4
