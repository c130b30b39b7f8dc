"""Random messages for property tests (names, shapes, dtypes, config values, NaN metrics)."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from fedllm.message import Message

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int8, torch.bool]
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
config_values = st.one_of(
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    arrays = {}
    for name in draw(st.lists(names, max_size=4, unique=True)):
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        dtype = draw(st.sampled_from(DTYPES))
        arrays[name] = (torch.rand(shape) * 10).to(dtype)
    config = draw(st.dictionaries(names, config_values, max_size=5))
    metrics = draw(st.dictionaries(names, st.floats(allow_nan=True), max_size=5))
    return Message(arrays, config, metrics)


def assert_same_message(back: Message, message: Message) -> None:
    """``back`` carries exactly ``message``: config, metrics (NaN as NaN), tensors bit for bit."""
    assert back.config == message.config
    assert list(back.metrics) == list(message.metrics)
    for name, value in message.metrics.items():
        assert back.metrics[name] == value or (math.isnan(value) and math.isnan(back.metrics[name]))
    assert set(back.arrays) == set(message.arrays)
    for name, tensor in message.arrays.items():
        assert back.arrays[name].dtype == tensor.dtype and torch.equal(back.arrays[name], tensor)
