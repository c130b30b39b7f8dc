"""Prompt, prefix, P-tuning, IA3 and bottleneck adapters: initialisation, settings,
errors, training paths (checkpointing, bf16), generation and the loss alignment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from fedllm.client.train import train_locally
from fedllm.components import METHODS
from fedllm.config import ClientConfig, ConfigError, MethodConfig, ModelConfig, parse_config
from fedllm.data import IGNORE_INDEX, Example
from fedllm.eval.evaluate import aligned_targets, evaluate
from fedllm.eval.generate import decode_without_cache, generate_reply
from fedllm.federation.setup import enable_gradient_checkpointing, prepare
from fedllm.model.load import load_base_model, load_tokenizer
from fedllm.model.methods import MethodError, get_method, load_adapter
from fedllm.model.state import trainable_names
from tests.support.runs import tiny_config

IDS = torch.tensor([[1, 504, 1122, 4944, 253, 37, 2, 2], [1, 55, 66, 77, 88, 99, 100, 2]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
LABELS = torch.where(MASK.bool(), IDS, IGNORE_INDEX)
NEW_KINDS = ["prompt", "prefix", "ptuning", "ia3", "adapter"]
SMALL = MethodConfig(num_virtual_tokens=3, encoder_hidden_size=16, adapter_size=8)


def tiny(seed: int = 0, lively: bool = False) -> PreTrainedModel:
    """The tiny preset; ``lively`` spreads its weights so that greedy decoding varies."""
    model = load_base_model(ModelConfig(name="tiny"), seed=seed)
    if lively:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
    return model


def applied(kind: str, base: PreTrainedModel | None = None, **settings: object) -> torch.nn.Module:
    cfg = SMALL.model_copy(update={"kind": kind, **settings})
    torch.manual_seed(0)
    return get_method(kind).apply(base if base is not None else tiny(), cfg)


def perturb(model: torch.nn.Module, scale: float = 0.1, seed: int = 5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=gen))


def test_every_kind_is_registered() -> None:
    assert set(NEW_KINDS) | {"lora", "full"} <= set(METHODS.names())
    for kind in NEW_KINDS:
        assert get_method(kind).name == kind


def test_prompt_text_init_uses_the_texts_token_embeddings() -> None:
    text = "Answer the question helpfully:"
    base = tiny()
    table = base.get_input_embeddings().weight.detach().clone()
    model = applied("prompt", base, prompt_init="text", prompt_init_text=text, num_virtual_tokens=9)
    ids = load_tokenizer("tiny")(text)["input_ids"]
    assert 1 < len(ids) < 9  # so the ids are repeated, then cut
    expected = table[(ids * 9)[:9]]
    (name,) = trainable_names(model)
    torch.testing.assert_close(dict(model.named_parameters())[name].detach(), expected)


def test_prompt_vocab_init_draws_vocabulary_embeddings_reproducibly() -> None:
    base = tiny()
    table = base.get_input_embeddings().weight.detach().clone()
    first = dict(applied("prompt", base).named_parameters())
    (weight,) = [p.detach() for p in first.values() if p.requires_grad]
    assert weight.shape == (3, 64)
    assert (weight[:, None, :] == table[None]).all(dim=-1).any(dim=-1).all()
    (again,) = [p for p in applied("prompt").parameters() if p.requires_grad]
    assert torch.equal(weight, again.detach())


def test_prefix_from_text_computes_what_the_text_in_front_computes() -> None:
    text = "Answer the question helpfully:"
    ids = load_tokenizer("tiny")(text, add_special_tokens=False)["input_ids"]
    x = IDS[:1, :6]
    with torch.no_grad():
        expected = tiny(lively=True)(input_ids=torch.cat([torch.tensor([ids]), x], 1)).logits
        model = applied(
            "prefix",
            tiny(lively=True),
            prompt_init="text",
            prompt_init_text=text,
            num_virtual_tokens=len(ids),
        )
        model.eval()
        got = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
    # Two computation orders (the prefix's keys/values computed apart, then attended to, vs
    # the same text in front) agree in fp32 only to rounding: logits of magnitude ~11 differ
    # by up to ~2e-5 (about 20 ulp after the layers' accumulations, varying with the
    # transformers release). 1e-4 is what two orders can promise; a wrong prefix (other
    # tokens, other positions, a random init) differs by whole units.
    torch.testing.assert_close(got, expected[:, len(ids) :], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"prompt_init": "text"}, "method.prompt_init = 'text' needs a non-empty method.prompt"),
        ({"prompt_init": "text", "prompt_init_text": "  "}, "prompt_init_text"),
        (
            {"ia3_feedforward_modules": ["up_proj"]},
            "method.ia3_feedforward_modules \\['up_proj'\\]",
        ),
        ({"ia3_target_modules": []}, "method.ia3_target_modules is empty"),
        ({"prompt_init": "words"}, "method.prompt_init = 'words'"),
        ({"adapter_size": 0}, "method.adapter_size = 0"),
    ],
)
def test_invalid_settings_name_the_key(method: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"method": method})


def test_ia3_target_that_matches_nothing_names_the_key() -> None:
    with pytest.raises(MethodError, match=r"method.ia3_target_modules \['wq'\].*down_proj"):
        applied("ia3", ia3_target_modules=["wq"], ia3_feedforward_modules=[])


def test_prefix_refuses_gradient_checkpointing_before_loading_anything() -> None:
    config = tiny_config('method.kind="prefix"', "client.gradient_checkpointing=true")
    with pytest.raises(MethodError, match="'prefix' does not work with client.gradient_check"):
        prepare(config.model_copy(update={"model": ModelConfig(name="/nonexistent/model")}))
    base = tiny()
    enable_gradient_checkpointing(base)
    with pytest.raises(MethodError, match="activation checkpointing"):
        applied("prefix", base)


def loss_and_grads(model: torch.nn.Module, bf16: bool = False) -> tuple[float, torch.Tensor]:
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert len(grads) == len(trainable_names(model))
    return float(loss.detach()), torch.cat(grads)


@pytest.mark.parametrize("kind", ["prompt", "ptuning", "ia3", "adapter"])
def test_checkpointing_gives_the_same_gradients_and_bf16_trains(kind: str) -> None:
    def build() -> torch.nn.Module:
        model = applied(kind)
        perturb(model)
        return model

    loss, grads = loss_and_grads(build())
    checkpointed = build()
    enable_gradient_checkpointing(checkpointed)
    loss_ck, grads_ck = loss_and_grads(checkpointed)
    assert loss_ck == loss
    torch.testing.assert_close(grads_ck, grads)
    loss_bf16, grads_bf16 = loss_and_grads(build(), bf16=True)
    assert loss_bf16 == pytest.approx(loss, rel=1e-2)
    assert torch.isfinite(grads_bf16).all() and grads_bf16.abs().sum() > 0


def test_prefix_trains_under_bf16_autocast() -> None:
    model = applied("prefix")
    loss, grads = loss_and_grads(model)
    loss_bf16, grads_bf16 = loss_and_grads(applied("prefix"), bf16=True)
    assert loss_bf16 == pytest.approx(loss, rel=1e-2)
    assert grads.abs().sum() > 0 and torch.isfinite(grads_bf16).all()


@pytest.mark.parametrize("kind", ["prompt", "prefix", "ptuning"])
def test_training_loss_and_evaluate_score_the_same_tokens(kind: str) -> None:
    """Packed text: label 0 is a real token. A prompt-learning model would score it
    from its last virtual token; training masks it, as evaluate() never scores it."""
    model = applied(kind)
    perturb(model, scale=0.5)
    examples = [Example(ids.tolist(), ids.tolist()) for ids in IDS]
    before = evaluate(model, examples, batch_size=2, pad_id=2)
    cfg = ClientConfig(local_steps=1, batch_size=2, lr=1e-9)
    metrics = train_locally(model, examples, cfg, steps=1, seed=0, pad_id=2)
    assert metrics["train_loss"] == pytest.approx(before.loss, rel=1e-5)
    assert before.tokens == 2 * 7


def test_aligned_targets_skip_virtual_positions() -> None:
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, IGNORE_INDEX]])
    plain = aligned_targets(labels, 4)
    assert plain.tolist() == [[5, 6, IGNORE_INDEX, IGNORE_INDEX]]
    virtual = aligned_targets(labels, 6)
    assert virtual.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="3 logit positions for 4 tokens"):
        aligned_targets(labels, 3)


def greedy_reference(model: torch.nn.Module, ids: torch.Tensor, steps: int) -> list[int]:
    """Greedy decoding by full forward passes, no cache: the definition of the reply."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def test_decoding_without_cache_equals_transformers_generate() -> None:
    model = tiny(lively=True)
    ids = IDS[1:, :6]
    mine = decode_without_cache(model, ids, 6, temperature=0.0, stop_ids=set())
    theirs = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=2)
    assert mine.tolist() == theirs[:, 6:].tolist()
    assert len(set(mine[0].tolist())) > 1, "the check needs a non-degenerate model"


@pytest.mark.parametrize("kind", ["prompt", "prefix", "ptuning"])
def test_generation_keeps_the_virtual_tokens_at_every_step(kind: str) -> None:
    model = applied(kind, tiny(lively=True))
    perturb(model, scale=3.0)
    model.eval()
    tokenizer = load_tokenizer("tiny")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me about apples"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    expected = greedy_reference(model, ids, 6)
    assert expected != greedy_reference(model.get_base_model(), ids, 6), "tokens must matter"
    stop = tokenizer.eos_token_id
    expected = expected[: expected.index(stop) + 1] if stop in expected else expected
    reply = generate_reply(model, tokenizer, "Tell me about apples", max_new_tokens=6)
    assert reply == tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_adapter_starts_as_the_identity_and_trains_only_adapters() -> None:
    base_logits = tiny()(input_ids=IDS).logits
    model = applied("adapter")
    assert torch.equal(model(input_ids=IDS).logits, base_logits)
    names = trainable_names(model)
    assert names == [
        f"model.layers.{i}.mlp.adapter.{part}.{kind}"
        for i in range(2)
        for part in ("down", "up")
        for kind in ("weight", "bias")
    ]


def test_adapter_reload_is_exact_and_checks_what_it_loads(tmp_path: Path) -> None:
    method = get_method("adapter")
    model = applied("adapter")
    perturb(model)
    model.eval()
    method.export(model, tmp_path / "a")
    reloaded = load_adapter(tiny(), tmp_path / "a")
    assert not any(p.requires_grad for p in reloaded.parameters())
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=IDS).logits, model(input_ids=IDS).logits)
    with pytest.raises(MethodError, match="not a bottleneck adapter export"):
        load_adapter(tiny(), tmp_path)
    with pytest.raises(MethodError, match="hidden size 64, the model has 128"):
        load_adapter(load_base_model(ModelConfig(name="tiny-4l"), seed=0), tmp_path / "a")
    with pytest.raises(MethodError, match="already has an adapter"):
        load_adapter(reloaded, tmp_path / "a")


@pytest.mark.parametrize("kind", ["prompt", "prefix", "ptuning", "adapter"])
def test_methods_that_cannot_merge_say_so(kind: str) -> None:
    with pytest.raises(MethodError, match=f"method.kind = '{kind}' cannot be merged"):
        get_method(kind).merged(applied(kind))


def test_ia3_merges_into_the_base_weights() -> None:
    method = get_method("ia3")
    model = applied("ia3")
    perturb(model, scale=0.3)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
        merged = method.merged(model)
        torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=1e-4, atol=1e-4)
    assert not any("ia3" in name for name, _ in merged.named_parameters())
