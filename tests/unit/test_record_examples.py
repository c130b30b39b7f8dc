"""Record-level DP-SGD trains on records: under ``privacy.dp = 'local'`` every training
example is exactly one record (issue 25, point 5).

The checks are against each record's own tokenization (the tokenizer called on the
record alone), not against the build's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedllm.config import ConfigError, DataConfig
from fedllm.data import DataError, build_client_records, build_federated_data
from fedllm.data.apart import IN_PROCESS_ENV
from fedllm.data.format import IGNORE_INDEX, encode_each_chat
from fedllm.federation.runner import run
from tests.support.runs import tiny_config

SEQ_LEN = 16
WORDS = {"ann": "apple", "bob": "banana", "cy": "cherry"}


def _text_file(tmp_path: Path) -> Path:
    """Text records of 2 to 40 words (some far longer than ``SEQ_LEN`` tokens), each
    unique, three users."""
    lines = [
        json.dumps({"text": f"{user} {i} " + " ".join([word] * (2 + (7 * i) % 39)), "user": user})
        for user, word in WORDS.items()
        for i in range(14)
    ]
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _chat_file(tmp_path: Path) -> Path:
    """Chats whose answers run from a few words to far past ``seq_len``."""
    lines = [
        json.dumps(
            {
                "prompt": f"question {user} {i}",
                "response": f"answer {user} {i} " + " ".join([word] * ((5 * i) % 31)),
                "user": user,
            }
        )
        for user, word in WORDS.items()
        for i in range(14)
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _own_ids(tokenizer: Any, text: str) -> list[int]:
    """A text record's tokens on their own, then EOS."""
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def _train_texts(cfg: DataConfig, seed: int) -> dict[str, list[str]]:
    return {
        cid: [str(r["text"]) for r in split.train]
        for cid, split in build_client_records(cfg, seed).clients.items()
    }


def test_packing_puts_one_record_into_several_examples(data_tokenizer: Any, tmp_path: Path) -> None:
    # the old (and still non-DP) build: records joined and cut into seq_len blocks
    cfg = DataConfig(source=str(_text_file(tmp_path)), num_clients=3, seq_len=SEQ_LEN)
    data = build_federated_data(cfg, data_tokenizer, seed=0)
    most = 0
    for cid, texts in _train_texts(cfg, 0).items():
        stream = [t for text in texts for t in _own_ids(data_tokenizer, text)]
        blocks = data.clients[cid].train
        assert [t for b in blocks for t in b.input_ids] == stream[: SEQ_LEN * len(blocks)]
        start = 0
        for text in texts:
            end = start + len(_own_ids(data_tokenizer, text))
            most = max(most, (end - 1) // SEQ_LEN - start // SEQ_LEN + 1)
            start = end
    assert most >= 3  # a record in g >= 3 examples: only g-fold group privacy for it


def test_dp_local_makes_every_text_example_one_record(data_tokenizer: Any, tmp_path: Path) -> None:
    cfg = DataConfig(source=str(_text_file(tmp_path)), num_clients=3, seq_len=SEQ_LEN)
    with pytest.warns(UserWarning, match=r"training records are longer than data.seq_len = 16"):
        data = build_federated_data(cfg, data_tokenizer, seed=0, per_record="truncate")
    long_ones = 0
    for cid, texts in _train_texts(cfg, 0).items():
        own = [_own_ids(data_tokenizer, text) for text in texts]
        client = data.clients[cid]
        assert [e.input_ids for e in client.train] == [ids[:SEQ_LEN] for ids in own]
        assert all(e.labels == e.input_ids for e in client.train)
        cut = sum(len(ids) > SEQ_LEN for ids in own)
        assert client.truncated == cut
        long_ones += cut
    assert long_ones > 0
    summary = data.summary()
    assert summary["truncated_records"] == long_ones
    message = f"{long_ones} of {summary['train_examples']} training records"
    with pytest.warns(UserWarning, match=message):
        build_federated_data(cfg, data_tokenizer, seed=0, per_record="truncate")
    # held-out and test splits are encoded as without it
    packed = build_federated_data(cfg, data_tokenizer, seed=0)
    assert data.test == packed.test
    assert all(data.clients[c].eval == packed.clients[c].eval for c in data.clients)
    assert "truncated_records" not in packed.summary()


def test_dp_local_chats_are_one_record_each_cut_with_a_count(
    data_tokenizer: Any, tmp_path: Path
) -> None:
    cfg = DataConfig(source=str(_chat_file(tmp_path)), num_clients=3, seq_len=48)
    with pytest.warns(UserWarning, match="training records are longer than"):
        data = build_federated_data(cfg, data_tokenizer, seed=0, per_record="truncate")
    plain = build_federated_data(cfg, data_tokenizer, seed=0)
    long_ones = 0
    for cid, split in build_client_records(cfg, 0).clients.items():
        chats = [r["messages"] for r in split.train]
        rendered = data_tokenizer.apply_chat_template(chats, tokenize=False)
        own = data_tokenizer(rendered, add_special_tokens=False)["input_ids"]
        client = data.clients[cid]
        assert [e.input_ids for e in client.train] == [ids[:48] for ids in own]
        whole = encode_each_chat(chats, data_tokenizer, None)
        assert [e.labels for e in client.train] == [w.labels[:48] for w in whole if w]
        assert all(any(x != IGNORE_INDEX for x in e.labels) for e in client.train)
        assert client.truncated == sum(len(ids) > 48 for ids in own)
        long_ones += client.truncated
        # chat SFT was one record per example already: the same examples
        assert client.train == plain.clients[cid].train
    assert long_ones > 0 and data.summary()["truncated_records"] == long_ones


def test_dp_local_text_format_encodes_each_chat_as_its_own_text(
    data_tokenizer: Any, tmp_path: Path
) -> None:
    cfg = DataConfig(
        source=str(_chat_file(tmp_path)), num_clients=3, seq_len=SEQ_LEN, format="text"
    )
    with pytest.warns(UserWarning):
        data = build_federated_data(cfg, data_tokenizer, seed=0, per_record="truncate")
    for cid, split in build_client_records(cfg, 0).clients.items():
        texts = ["\n".join(m["content"] for m in r["messages"]) for r in split.train]
        expected = [_own_ids(data_tokenizer, text)[:SEQ_LEN] for text in texts]
        assert [e.input_ids for e in data.clients[cid].train] == expected


def test_long_records_refused_on_request(data_tokenizer: Any, tmp_path: Path) -> None:
    cfg = DataConfig(source=str(_text_file(tmp_path)), num_clients=3, seq_len=SEQ_LEN)
    with pytest.raises(DataError, match=r"privacy.long_records = 'refuse': \d+ of \d+ training"):
        build_federated_data(cfg, data_tokenizer, seed=0, per_record="refuse")
    roomy = cfg.model_copy(update={"seq_len": 256})
    data = build_federated_data(roomy, data_tokenizer, seed=0, per_record="refuse")
    assert data.summary()["truncated_records"] == 0


def test_the_config_asks_for_one_record_per_example_under_local_dp_only() -> None:
    local = tiny_config("privacy.dp='local'", "privacy.clip_norm=1.0", "privacy.noise_multiplier=1")
    assert local.privacy.per_record() == "truncate"
    refuse = local.model_copy(deep=True)
    refuse.privacy.long_records = "refuse"
    assert refuse.privacy.per_record() == "refuse"
    assert tiny_config().privacy.per_record() is None
    with pytest.raises(ConfigError, match="privacy.long_records = 'refuse' applies to"):
        tiny_config("privacy.long_records='refuse'")


def test_a_dp_sgd_run_reports_record_level_and_the_records_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IN_PROCESS_ENV, "1")  # the build's warning is raised here
    config = tiny_config(
        f"data.source='{_text_file(tmp_path)}'",
        "data.partition_by='user'",
        "data.num_clients=3",
        f"data.seq_len={SEQ_LEN}",
        "data.max_test_examples=4",
        "privacy.dp='local'",
        "privacy.clip_norm=1.0",
        "privacy.noise_multiplier=1.0",
        "server.rounds=1",
    )
    with pytest.warns(UserWarning, match="training records are longer than"):
        result = run(config, tmp_path / "run")
    privacy, data = result.summary["privacy"], result.summary["data"]
    assert privacy["level"] == "record"
    assert privacy["records_truncated"] == data["truncated_records"] > 0
    texts = _train_texts(config.data, config.seed)
    assert data["train_examples"] == sum(len(texts[c]) for c in data["clients"])
