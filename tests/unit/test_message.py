"""Messages: the encoding round-trips, and the simulator's byte count is the encoding's."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from fedllm.message import Message
from fedllm.types import join_parts, split_parts
from fedllm.wire import WireError, decode_message, encode_message, message_bytes
from tests.support.messages import assert_same_message, messages


@settings(max_examples=150, deadline=None)
@given(messages())
def test_counted_bytes_are_the_encoded_length_and_decoding_inverts(message: Message) -> None:
    payload = encode_message(message)
    assert message_bytes(message) == len(payload)
    assert_same_message(decode_message(payload), message)


def test_byte_count_depends_on_names_and_shapes_not_float_values() -> None:
    a = Message({"w": torch.zeros(3)}, {"round": 1}, {"loss": 0.1, "steps": 3.0})
    b = Message({"w": torch.ones(3)}, {"round": 1}, {"loss": 12345.678901, "steps": 300.0})
    assert message_bytes(a) == message_bytes(b)


@pytest.mark.parametrize("cut", [0, 4, 9, 30])
def test_truncated_payloads_are_refused_clearly(cut: int) -> None:
    payload = encode_message(Message({"w": torch.ones(4)}, {"round": 2}, {"loss": 1.0}))
    with pytest.raises(WireError, match="not an encoded message"):
        decode_message(payload[:cut])


def test_plugin_parts_split_from_the_model_tensors_and_back() -> None:
    own = {"model.layers.0.lora_A.default.weight": torch.ones(2)}
    parts = {"scaffold": {"model.layers.0.lora_A.default.weight": torch.zeros(2)}}
    joined = join_parts(own, parts)
    assert set(joined) == {
        "model.layers.0.lora_A.default.weight",
        "scaffold/model.layers.0.lora_A.default.weight",
    }
    back_own, back_parts = split_parts(joined)
    assert back_own.keys() == own.keys() and back_parts.keys() == parts.keys()
