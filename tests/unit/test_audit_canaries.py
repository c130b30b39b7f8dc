"""Canary settings and insertion: the right clients, the right copies, training records
only, reproducible from the seed, and nothing at all when they are off."""

from __future__ import annotations

from typing import Any

import pytest

from fedllm.config import Config, ConfigError
from fedllm.data import DataError, build_client_records, build_federated_data
from fedllm.data.canary import CANARY_KEY, CHAT_PROMPT, Canary
from tests.support.runs import tiny_config

ON = ["data.seq_len=64", "privacy.canaries=3", "privacy.canary_repeats=4"]


def canary_config(*overrides: str) -> Config:
    return tiny_config(*ON, *overrides)


def strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if CANARY_KEY not in r]


def test_off_by_default_and_the_data_untouched(data_tokenizer: Any) -> None:
    plain = tiny_config("data.seq_len=64")
    assert plain.privacy.canaries == 0 and plain.data.canary_spec is None
    on = canary_config()
    raw_off = build_client_records(plain.data, plain.seed)
    raw_on = build_client_records(on.data, on.seed)
    assert raw_off.canaries == []
    assert raw_on.canaries and raw_on.test == raw_off.test
    for cid, split in raw_off.clients.items():
        assert raw_on.clients[cid].eval == split.eval  # held-out: never touched
        assert strip(raw_on.clients[cid].train) == split.train  # the rest in its order
    built = build_federated_data(plain.data, data_tokenizer, plain.seed)
    assert built.canaries == [] and "canaries" not in built.summary()


def test_right_clients_repeats_and_reproducible(data_tokenizer: Any) -> None:
    cfg = canary_config("privacy.canary_clients=['trivia', 'coding']", "privacy.canary_controls=2")
    raw = build_client_records(cfg.data, cfg.seed)
    inserted = [c for c in raw.canaries if c.client is not None]
    controls = [c for c in raw.canaries if c.client is None]
    assert [c.client for c in inserted] == ["trivia", "coding", "trivia"]  # round-robin
    assert len(controls) == 2 and all(c.repeats == 0 for c in controls)
    assert len({c.secret for c in raw.canaries}) == 5
    for c in raw.canaries:
        assert len(c.secret) == 6 and c.secret.isdigit()
        assert c.text == f"my secret code is {c.secret}"
    for cid, split in raw.clients.items():
        ids = [r[CANARY_KEY] for r in split.train if CANARY_KEY in r]
        want = [c.id for c in inserted if c.client == cid]
        assert sorted(ids) == sorted(i for i in want for _ in range(4))
        assert not any(CANARY_KEY in r for r in split.eval)
    chat = next(r for r in raw.clients["coding"].train if CANARY_KEY in r)
    assert chat["messages"][0] == {"role": "user", "content": CHAT_PROMPT}
    assert chat["messages"][1]["content"] == inserted[1].text
    # same seed: the same canaries at the same places; another seed: other secrets
    again = build_client_records(cfg.data, cfg.seed)
    assert again.canaries == raw.canaries and again.clients == raw.clients
    other = build_client_records(cfg.data, cfg.seed + 1)
    assert {c.secret for c in other.canaries}.isdisjoint({c.secret for c in raw.canaries})


def test_tokenized_copies_survive_the_example_cap(data_tokenizer: Any) -> None:
    cfg = canary_config("data.max_examples_per_client=20", "privacy.canary_repeats=15")
    data = build_federated_data(cfg.data, data_tokenizer, cfg.seed)
    first = sorted(data.clients)[0]  # the default: the first client
    assert {c.client for c in data.canaries if c.client} == {first}
    for cid, client in data.clients.items():
        texts = [data_tokenizer.decode(e.input_ids) for e in client.train]
        for c in data.canaries:
            copies = sum(c.text in t for t in texts)
            assert copies == (15 if c.client == cid else 0), (cid, c.id)
        assert not any("secret code" in data_tokenizer.decode(e.input_ids) for e in client.eval)
    summary = data.summary()
    assert [Canary.from_json(c) for c in summary["canaries"]] == data.canaries


def test_text_format_inserts_text_records(data_tokenizer: Any) -> None:
    cfg = canary_config("data.format=text")
    raw = build_client_records(cfg.data, cfg.seed)
    records = [r for s in raw.clients.values() for r in s.train if CANARY_KEY in r]
    assert records and all(set(r) == {"text", CANARY_KEY} for r in records)
    assert all(c.kind == "text" for c in raw.canaries)


def test_unknown_client_is_refused_naming_the_valid_ones() -> None:
    cfg = canary_config("privacy.canary_clients=['nobody']")
    with pytest.raises(ConfigError, match=r"privacy.canary_clients.*'nobody'.*coding, emotion"):
        build_client_records(cfg.data, cfg.seed)


def test_a_canary_the_sequence_length_would_cut_is_refused(data_tokenizer: Any) -> None:
    cfg = canary_config("data.seq_len=24")
    with pytest.raises(DataError, match=r"takes \d+ tokens, more than data.seq_len = 24"):
        build_federated_data(cfg.data, data_tokenizer, cfg.seed)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.canary_repeats=5"], "privacy.canary_repeats set with privacy.canaries = 0"),
        (["privacy.canaries=1", "privacy.canary_template='no secret'"], "exactly once"),
        (["privacy.canaries=1", "privacy.canary_template='{secret} first'"], "text before"),
        (["privacy.canaries=1", "privacy.canary_template='{x} is {secret}'"], "braces"),
        (["privacy.canaries=9", "privacy.canary_digits=1", "privacy.canary_controls=2"], "fit"),
        (["privacy.canaries=1", "privacy.canary_clients=['a', 'a']"], "twice"),
        (["privacy.canaries=1", "privacy.canary_candidates=5"], "canary_candidates"),
    ],
)
def test_bad_settings_fail_at_load(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(*overrides)
