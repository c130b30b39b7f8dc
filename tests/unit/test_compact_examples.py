"""Compact examples: the same examples, slices and batches as the lists they replace."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedllm.data import IGNORE_INDEX, Example, collate
from fedllm.data.compact import Examples

TOKEN = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def example(draw: st.DrawFn) -> Example:
    ids = draw(st.lists(TOKEN, min_size=0, max_size=12))
    labels = [draw(st.sampled_from([IGNORE_INDEX, t])) for t in ids]
    return Example(ids, labels)


EXAMPLES = st.lists(example(), max_size=15)


@given(EXAMPLES, st.integers(-20, 20), st.integers(-20, 20), st.sampled_from([None, 1, 2, -1]))
def test_indexing_and_slicing_match_the_list(
    items: list[Example], start: int, stop: int, step: int | None
) -> None:
    packed = Examples.pack(items)
    assert len(packed) == len(items)
    assert list(packed) == items and packed == items
    for i in range(-len(items), len(items)):
        assert packed[i] == items[i]
    window = packed[start:stop:step]
    assert isinstance(window, Examples)
    assert list(window) == items[start:stop:step]
    assert window.tokens == sum(len(e) for e in items[start:stop:step])


@given(st.lists(EXAMPLES, max_size=4))
def test_concatenation_and_counts_match_the_lists(parts: list[list[Example]]) -> None:
    joined = [e for part in parts for e in part]
    packed = Examples.concat([Examples.pack(p) for p in parts])
    assert list(packed) == joined
    assert packed.label_tokens == sum(t != IGNORE_INDEX for e in joined for t in e.labels)
    if parts:
        assert list(Examples.pack(parts[0]) + joined) == parts[0] + joined
        assert list(joined + Examples.pack(parts[0])) == joined + parts[0]


@given(EXAMPLES.filter(bool), st.integers(0, 3))
def test_batches_from_compact_examples_equal_batches_from_lists(
    items: list[Example], pad_id: int
) -> None:
    packed = Examples.pack(items)
    for start in range(0, len(items), 4):
        want = collate(items[start : start + 4], pad_id)
        got = collate(packed[start : start + 4], pad_id)
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(want[key], got[key])


def test_out_of_range_and_mismatched_input_are_refused() -> None:
    packed = Examples.pack([Example([1, 2], [1, IGNORE_INDEX])])
    with pytest.raises(IndexError, match="example 1 of 1"):
        packed[1]
    with pytest.raises(ValueError, match="example 0: 2 input ids but 1 labels"):
        Examples.pack([Example([1, 2], [1])])


def test_compact_examples_pickle_and_take_four_bytes_per_id_and_label() -> None:
    items = [Example(list(range(300 + i, 364 + i)), [IGNORE_INDEX] * 64) for i in range(100)]
    packed = Examples.pack(items)
    assert pickle.loads(pickle.dumps(packed)) == items
    assert packed.nbytes == 100 * 64 * 8 + 101 * 8
