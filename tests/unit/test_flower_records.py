"""fedllm messages in Flower records: exact round trips through Flower's protobuf."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common import serde
from hypothesis import given, settings

from fedllm.message import Message
from fedllm.runtime.flower import chunks as chunks_module
from fedllm.runtime.flower import records
from fedllm.runtime.flower.records import from_records, payload_size, to_records
from fedllm.wire import WireError, encode_message
from tests.support.messages import assert_same_message, messages


def through_protobuf(content: RecordDict) -> RecordDict:
    return serde.recorddict_from_proto(serde.recorddict_to_proto(content))


@settings(max_examples=100, deadline=None)
@given(messages())
def test_any_message_survives_flowers_encoding_bit_for_bit(message: Message) -> None:
    content = through_protobuf(to_records(message, "train"))
    phase, back = from_records(content)
    assert phase == "train"
    assert_same_message(back, message)
    assert payload_size(content) == len(encode_message(message))


def test_a_large_state_travels_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks_module, "CHUNK_BYTES", 1 << 20)
    big = Message({"w": torch.randn(3_000_000), "b": torch.randn(7).bfloat16()}, {"round": 2})
    content = to_records(big, "train")
    chunks = content.array_records[records.PAYLOAD]
    size = len(encode_message(big))
    assert len(chunks) == math.ceil(size / (1 << 20)) >= 12
    assert all(len(chunks[name].data) <= 1 << 20 for name in chunks)
    _, back = from_records(through_protobuf(content))
    assert_same_message(back, big)


def test_records_that_are_not_a_fedllm_message_are_refused() -> None:
    with pytest.raises(WireError, match="not a fedllm message"):
        from_records(RecordDict({"arrays": ArrayRecord()}))
    content = to_records(Message(config={"round": 1}), "train")
    content.config_records[records.HEADER] = ConfigRecord({"phase": "train", "bytes": 1})
    with pytest.raises(WireError, match="arrived as"):
        from_records(content)
