"""Loading base models and tokenizers: presets, the shipped SmolLM2, local paths."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

from fedllm.config import ModelConfig
from fedllm.model import load
from fedllm.model.load import (
    SMOLLM2,
    ModelLoadError,
    cache_dir,
    load_base_model,
    load_tokenizer,
    smollm2_dir,
    smollm2_tokenizer_dir,
    tokenizer_source,
)
from fedllm.model.presets import (
    SMOLLM2_BOS_ID,
    SMOLLM2_EOS_ID,
    SMOLLM2_VOCAB_SIZE,
    preset_config,
    preset_names,
)
from fedllm.model.state import count_parameters


def _tiny(
    seed: int = 0, name: str = "tiny", dtype: Literal["float32", "bfloat16"] = "float32"
) -> PreTrainedModel:
    return load_base_model(ModelConfig(name=name, dtype=dtype), seed=seed)


def _llama_count(c: LlamaConfig) -> int:
    """Parameters of a tied-embedding Llama, by hand."""
    h, inter, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads
    assert kv is not None
    head_dim = h // c.num_attention_heads
    attention = 2 * h * h + 2 * h * kv * head_dim
    layer = attention + 3 * h * inter + 2 * h
    return c.vocab_size * h + c.num_hidden_layers * layer + h


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("FEDLLM_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "fedllm"


def test_tokenizer_matches_presets_and_has_pad() -> None:
    tok = load_tokenizer("tiny")
    assert tok.pad_token is not None
    assert len(tok) == SMOLLM2_VOCAB_SIZE
    assert tok.bos_token_id == SMOLLM2_BOS_ID
    assert tok.eos_token_id == SMOLLM2_EOS_ID
    assert tok.pad_token_id == SMOLLM2_EOS_ID


def test_tokenizer_without_pad_falls_back_to_eos(tmp_path: Path) -> None:
    tok = load_tokenizer(SMOLLM2)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token


@pytest.mark.parametrize("name", preset_names())
def test_preset_parameter_count(name: str) -> None:
    model = _tiny(name=name)
    total, trainable = count_parameters(model)
    assert total == _llama_count(preset_config(name))
    assert trainable == total
    assert model.name_or_path == name
    assert not model.training


def test_tiny_is_about_3m_parameters() -> None:
    assert count_parameters(_tiny())[0] == 3_219_776


def test_seed_fixes_initialisation() -> None:
    a, b, c = _tiny(seed=1).state_dict(), _tiny(seed=1).state_dict(), _tiny(seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"]
    )


def test_loading_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _tiny(seed=7)
    assert torch.equal(torch.get_rng_state(), before)


def test_dtype_is_respected() -> None:
    model = _tiny(dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    fp32 = _tiny(dtype="float32")
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}


def test_local_directory_loads(tmp_path: Path) -> None:
    model = _tiny(seed=3)
    model.save_pretrained(tmp_path / "m")
    load_tokenizer("tiny").save_pretrained(tmp_path / "m")
    loaded = load_base_model(ModelConfig(name=str(tmp_path / "m")), seed=0)
    expected, got = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert loaded.name_or_path == str(tmp_path / "m")
    assert load_tokenizer(str(tmp_path / "m")).pad_token is not None


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_base_model(ModelConfig(name=str(tmp_path / "nope")), seed=0)
    message = str(info.value)
    assert all(name in message for name in [SMOLLM2, *preset_names()])
    assert "network" in message


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="network"):
        load_base_model(ModelConfig(name="no-such-org/no-such-model"), seed=0)
    with pytest.raises(ModelLoadError, match="tiny"):
        load_tokenizer("no-such-org/no-such-model")
    assert time.perf_counter() - start < 10


def _fake_convert(out: Path) -> None:
    (out / "config.json").write_text("{}")
    (out / load._COMPLETE_MARKER).write_text("{}")


def test_conversion_is_atomic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path))

    def crash(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed half way")

    monkeypatch.setattr(load, "_convert_gguf", crash)
    with pytest.raises(RuntimeError):
        smollm2_dir()
    assert list(tmp_path.iterdir()) == []  # no half cache, no temp dir

    monkeypatch.setattr(load, "_convert_gguf", _fake_convert)
    assert smollm2_dir() == tmp_path / SMOLLM2
    assert [p.name for p in tmp_path.iterdir()] == [SMOLLM2]
    monkeypatch.setattr(load, "_convert_gguf", crash)
    assert smollm2_dir() == tmp_path / SMOLLM2  # cached: no second conversion


def test_concurrent_conversion_keeps_the_winner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path))
    final = tmp_path / SMOLLM2

    def race(out: Path) -> None:
        _fake_convert(out)
        final.mkdir()  # another process finished first
        _fake_convert(final)
        (final / "winner").write_text("")

    monkeypatch.setattr(load, "_convert_gguf", race)
    assert smollm2_dir() == final
    assert (final / "winner").exists()
    assert [p.name for p in tmp_path.iterdir()] == [SMOLLM2]


def test_smollm2_loads_with_sensible_loss(smollm2_path: Path) -> None:
    assert (smollm2_path / "config.json").is_file()
    start = time.perf_counter()
    model = load_base_model(ModelConfig(name=SMOLLM2), seed=0)
    load_s = time.perf_counter() - start
    tok = load_tokenizer(SMOLLM2)
    assert count_parameters(model)[0] == 134_515_008
    assert model.name_or_path == SMOLLM2
    assert load_s < 20
    text = (
        "The sun rose slowly over the quiet village. Children walked to school along the "
        "river, talking about the games they would play after class. Their parents went to "
        "work in the fields, and the old baker opened his shop to sell fresh bread."
    )
    batch = tok(text, return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert float(loss) < 4.0  # about 3.0 measured


TEXTS = [
    "Hello, world! What do you like to do on weekends?",
    "Unicode: naïve café, Ελληνικά, 日本語, emoji 🙂 and a no-break\u00a0space.",
    "   leading and trailing whitespace\t\n\n",
    "def area(r):\n    return 3.14159 * r ** 2  # circle\n",
    "<|im_start|>user\nspecial tokens typed in the text<|im_end|>",
]
CHATS = [
    [{"role": "user", "content": "What is a tuple?"}, {"role": "assistant", "content": "A list."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}],
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 tokenizer extracted into a cold cache, with the model conversion refused."""
    cache = tmp_path_factory.mktemp("cold-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDLLM_CACHE", str(cache))
        mp.setattr(load, "_convert_gguf", _refuse_conversion)
        folder = smollm2_tokenizer_dir()
        assert load_tokenizer("tiny").name_or_path == str(folder)
    assert [p.name for p in cache.iterdir()] == ["tokenizers"]  # no model, no temp dir
    assert [p.name for p in (cache / "tokenizers").iterdir()] == [SMOLLM2]
    return folder


@pytest.fixture(scope="module")
def gguf_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tokenizer as the full conversion used to save it: ``AutoTokenizer`` on the GGUF file."""
    out = tmp_path_factory.mktemp("reference")
    AutoTokenizer.from_pretrained(load._gguf_folder(), gguf_file=load._GGUF_FILE).save_pretrained(
        out
    )
    return out


def _refuse_conversion(out: Path) -> None:
    raise AssertionError("the model was converted only to get its tokenizer")


def _assert_same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> None:
    assert type(a) is type(b)
    assert a.get_vocab() == b.get_vocab()
    assert len(a) == len(b) == SMOLLM2_VOCAB_SIZE
    assert a.special_tokens_map == b.special_tokens_map
    assert a.all_special_ids == b.all_special_ids
    assert a.added_tokens_decoder == b.added_tokens_decoder
    assert a.chat_template == b.chat_template
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    for text in TEXTS:
        assert a(text)["input_ids"] == b(text)["input_ids"]
        ids = a(text, add_special_tokens=False)["input_ids"]
        assert a.decode(ids) == b.decode(ids)
    for chat in CHATS:
        rendered = a.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert rendered == b.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert a.apply_chat_template(chat)["input_ids"] == b.apply_chat_template(chat)["input_ids"]
    assert "<|im_start|>system" in a.apply_chat_template(CHATS[0], tokenize=False)


def test_extracted_tokenizer_equals_the_gguf_conversion(
    extracted: Path, gguf_reference: Path
) -> None:
    for name in TOKENIZER_FILES:
        assert (extracted / name).read_bytes() == (gguf_reference / name).read_bytes(), name
    _assert_same_tokenizer(
        AutoTokenizer.from_pretrained(extracted), AutoTokenizer.from_pretrained(gguf_reference)
    )


def test_full_conversion_holds_the_same_tokenizer(extracted: Path, smollm2_path: Path) -> None:
    for name in TOKENIZER_FILES:
        assert (extracted / name).read_bytes() == (smollm2_path / name).read_bytes(), name


def test_tokenizer_extraction_is_cached(
    extracted: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDLLM_CACHE", str(extracted.parent.parent))
    monkeypatch.setattr(load, "_convert_gguf", _refuse_conversion)

    def refuse_extraction(out: Path) -> None:
        raise AssertionError("extracted again despite the cache")

    monkeypatch.setattr(load, "_extract_tokenizer", refuse_extraction)
    for name in ("tiny", SMOLLM2):
        tok = load_tokenizer(name)
        assert tok.pad_token == tok.eos_token == "<|im_end|>"
        assert tokenizer_source(name) == str(extracted)
    assert AutoTokenizer.from_pretrained(tokenizer_source("tiny")).get_vocab() == tok.get_vocab()

    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path))
    (tmp_path / "tokenizers" / SMOLLM2).mkdir(parents=True)  # left by hand, incomplete
    with pytest.raises(ModelLoadError, match="not a complete fedllm cache; delete it"):
        load_tokenizer("tiny")
