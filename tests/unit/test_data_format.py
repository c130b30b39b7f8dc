"""Tokenization (chat SFT labels, text packing), collation and the full data build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fedllm.config import DataConfig
from fedllm.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    FederatedData,
    build_federated_data,
    collate,
)
from fedllm.data.format import encode_chats, pack_texts

END = "<|im_end|>"


def _labelled_runs(example: Example) -> list[list[int]]:
    """Maximal runs of consecutive tokens that carry a label."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(label)
        previous = label != IGNORE_INDEX
    return runs


# ---------------------------------------------------------------- chat SFT


def test_only_assistant_tokens_are_labelled(data_tokenizer: Any) -> None:
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris, naturally."},
        {"role": "user", "content": "And Germany?"},
        {"role": "assistant", "content": " Berlin — I think. 🙂"},
    ]
    (example,) = encode_chats([chat], data_tokenizer, seq_len=512)
    runs = [data_tokenizer.decode(run) for run in _labelled_runs(example)]
    assert runs == ["Paris, naturally." + END, " Berlin — I think. 🙂" + END]
    assert data_tokenizer.decode(example.input_ids) == data_tokenizer.apply_chat_template(
        chat, tokenize=False
    )


def test_default_system_prompt_is_masked(data_tokenizer: Any) -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    (example,) = encode_chats([chat], data_tokenizer, seq_len=512)
    text = data_tokenizer.decode(example.input_ids)
    assert "SmolLM" in text  # the template's default system prompt is present...
    runs = [data_tokenizer.decode(run) for run in _labelled_runs(example)]
    assert runs == ["hello there" + END]  # ...and takes no loss


def test_truncation_cuts_and_drops_examples_without_assistant_tokens(
    data_tokenizer: Any,
) -> None:
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a b c d e f g"}]
    long_prompt = [
        {"role": "user", "content": "word " * 100},
        {"role": "assistant", "content": "ok"},
    ]
    full = encode_chats([short], data_tokenizer, seq_len=512)[0]
    cut = encode_chats([short, long_prompt, short], data_tokenizer, seq_len=len(full) - 3)
    assert len(cut) == 2  # the long prompt leaves no assistant token: dropped
    assert cut[0].input_ids == full.input_ids[: len(full) - 3]
    assert cut[0].labels == full.labels[: len(full) - 3]
    assert encode_chats([short] * 5, data_tokenizer, seq_len=512, max_examples=3) == [full] * 3


# ---------------------------------------------------------------- packing


def test_packing_gives_exact_blocks_with_eos_between_documents(data_tokenizer: Any) -> None:
    texts = ["the cat sat on the mat", "dogs bark loudly at night", "a third short document"]
    eos = data_tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream += data_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    blocks = pack_texts(texts, data_tokenizer, seq_len=8)
    assert len(blocks) == len(stream) // 8  # the partial tail is dropped
    for k, block in enumerate(blocks):
        assert block.input_ids == stream[8 * k : 8 * (k + 1)]
        assert block.labels == block.input_ids
    assert pack_texts(texts, data_tokenizer, seq_len=8, max_examples=1) == blocks[:1]


def test_packing_keeps_a_lone_short_block(data_tokenizer: Any) -> None:
    (block,) = pack_texts(["tiny"], data_tokenizer, seq_len=64)
    assert block.input_ids[-1] == data_tokenizer.eos_token_id
    assert len(block.input_ids) < 64
    assert pack_texts([], data_tokenizer, seq_len=64) == []


# ---------------------------------------------------------------- collate


def test_collate_right_pads_and_masks() -> None:
    batch = collate([Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8], [8])], pad_id=0)
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


# ---------------------------------------------------------------- build


def _chat_file(tmp_path: Path, sizes: dict[str, int]) -> Path:
    """A jsonl of chats, ``sizes[user]`` records per user, every answer unique."""
    lines = [
        json.dumps({"prompt": f"question {u} {i}", "response": f"answer {u} {i}", "user": u})
        for u, n in sizes.items()
        for i in range(n)
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _all_examples(data: FederatedData) -> list[tuple[int, ...]]:
    examples = list(data.test)
    for client in data.clients.values():
        examples += client.train + client.eval
    return [tuple(e.input_ids) for e in examples]


def test_build_splits_are_disjoint_and_capped(data_tokenizer: Any, tmp_path: Path) -> None:
    path = _chat_file(tmp_path, {"ann": 40, "bob": 30, "cy": 20})
    cfg = DataConfig(source=str(path), num_clients=2, max_eval_examples=3, max_test_examples=5)
    data = build_federated_data(cfg, data_tokenizer, seed=0)
    assert list(data.clients) == ["ann", "bob"]
    assert len(data.test) == 5
    examples = _all_examples(data)
    assert len(examples) == len(set(examples))  # no record is in two splits
    for client in data.clients.values():
        assert 1 <= len(client.eval) <= 3
        assert len(client.train) >= 20
        assert all(len(e.input_ids) <= cfg.seq_len for e in client.train + client.eval)
    summary = data.summary()
    assert summary["num_clients"] == 2
    assert summary["test_examples"] == 5
    assert summary["clients"]["ann"]["eval"] == len(data.clients["ann"].eval)
    assert summary["train_tokens"] >= summary["train_loss_tokens"] > 0


def test_build_is_deterministic_in_the_seed(data_tokenizer: Any, tmp_path: Path) -> None:
    path = _chat_file(tmp_path, {"ann": 30, "bob": 30})
    cfg = DataConfig(source=str(path), partition="iid", num_clients=2, max_examples_per_client=12)
    first = build_federated_data(cfg, data_tokenizer, seed=7)
    assert build_federated_data(cfg, data_tokenizer, seed=7) == first
    other = build_federated_data(cfg, data_tokenizer, seed=8)
    assert other != first
    for client in first.clients.values():
        assert len(client.train) + len(client.eval) <= 12


def test_packing_never_mixes_clients(data_tokenizer: Any, tmp_path: Path) -> None:
    words = {"ann": "apple", "bob": "banana", "cy": "cherry"}
    lines = [
        json.dumps({"text": " ".join([word] * (5 + i)), "user": user})
        for user, word in words.items()
        for i in range(12)
    ]
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source=str(path), num_clients=3, seq_len=16, test_fraction=0.0)
    data = build_federated_data(cfg, data_tokenizer, seed=0)
    assert set(data.clients) == set(words) and data.test == []
    for user, client in data.clients.items():
        for block in client.train:
            assert len(block.input_ids) == 16 and block.labels == block.input_ids
        text = data_tokenizer.decode([t for e in client.train + client.eval for t in e.input_ids])
        others = [w for u, w in words.items() if u != user]
        assert words[user] in text and not any(w in text for w in others)


def test_small_clients_are_dropped_and_none_left_is_an_error(
    data_tokenizer: Any, tmp_path: Path
) -> None:
    path = _chat_file(tmp_path, {"ann": 30, "bob": 3})
    cfg = DataConfig(source=str(path), num_clients=2, min_client_examples=5, test_fraction=0.0)
    data = build_federated_data(cfg, data_tokenizer, seed=0)
    assert list(data.clients) == ["ann"]
    assert "min_client_examples = 5" in data.dropped["bob"]
    with pytest.raises(DataError, match="no client left"):
        build_federated_data(cfg.model_copy(update={"min_client_examples": 100}), data_tokenizer, 0)


def test_build_chatterbot_by_category(data_tokenizer: Any) -> None:
    cfg = DataConfig(source="chatterbot", partition_by="category", num_clients=3)
    data = build_federated_data(cfg, data_tokenizer, seed=0)
    assert list(data.clients) == ["emotion", "tech_support", "trivia"]  # the largest, sorted
    assert 0 < len(data.test) <= 64


def test_build_chitchat_default_config(data_tokenizer: Any) -> None:
    cfg = DataConfig(max_examples_per_client=16)
    data = build_federated_data(cfg, data_tokenizer, seed=0)
    assert list(data.clients) == sorted(data.clients) and len(data.clients) == 4
    for client in data.clients.values():
        assert len(client.train) + len(client.eval) <= 16
        for example in client.train + client.eval:
            assert len(example.input_ids) <= cfg.seq_len
            assert any(label != IGNORE_INDEX for label in example.labels)


def test_text_format_packs_chats_with_loss_on_every_token(
    data_tokenizer: Any, tmp_path: Path
) -> None:
    path = _chat_file(tmp_path, {"ann": 40, "bob": 30})
    sft = DataConfig(source=str(path), num_clients=2, seq_len=96)
    text = sft.model_copy(update={"format": "text", "seq_len": 32})
    packed = build_federated_data(text, data_tokenizer, seed=0)
    chats = build_federated_data(sft, data_tokenizer, seed=0)
    for cid, client in packed.clients.items():
        assert all(e.labels == e.input_ids for e in client.train)  # every token is a target
        assert all(len(e) == 32 for e in client.train[:-1])  # full blocks but the last
        decoded = data_tokenizer.decode([t for e in client.train for t in e.input_ids])
        other = "bob" if cid == "ann" else "ann"
        assert f"question {cid}" in decoded and f"answer {cid}" in decoded
        assert other not in decoded  # the same per-user split as the SFT build
        assert any(-100 in e.labels for e in chats.clients[cid].train)  # SFT masks prompts
