"""Tokenized examples stored compactly: three arrays instead of Python lists of ints.

A client's examples as lists cost about 36 bytes per token (a pointer and an int
object each for id and label) and, made while the raw corpus is alive, pin the
memory the corpus freed; as arrays they cost 8 bytes per token in two buffers.
Indexing gives back the same :class:`~fedllm.data.format.Example`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np
import numpy.typing as npt

from fedllm.data.format import IGNORE_INDEX, Example

Ints = npt.NDArray[np.int64]


class Examples(Sequence[Example]):
    """An immutable sequence of examples held as flat int32 ids and labels.

    Args:
        ids: every example's token ids, one after the other.
        labels: the labels, aligned with ``ids``.
        starts: example ``i`` is ``ids[starts[i]:starts[i + 1]]`` (``len + 1`` offsets).
    """

    __slots__ = ("_ids", "_labels", "_starts")

    def __init__(
        self, ids: npt.NDArray[np.int32], labels: npt.NDArray[np.int32], starts: Ints
    ) -> None:
        if ids.shape != labels.shape or starts[-1] != len(ids):
            raise ValueError("ids, labels and starts do not describe the same examples")
        self._ids, self._labels, self._starts = ids, labels, starts

    @classmethod
    def pack(cls, examples: Iterable[Example]) -> Examples:
        """The examples, copied into compact arrays (in order)."""
        items = list(examples)
        for row, example in enumerate(items):
            if len(example.labels) != len(example.input_ids):
                raise ValueError(
                    f"example {row}: {len(example.input_ids)} input ids but "
                    f"{len(example.labels)} labels"
                )
        starts = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum([len(e.input_ids) for e in items], out=starts[1:])
        ids = np.fromiter((t for e in items for t in e.input_ids), np.int32, int(starts[-1]))
        labels = np.fromiter((t for e in items for t in e.labels), np.int32, int(starts[-1]))
        return cls(ids, labels, starts)

    @classmethod
    def concat(cls, parts: Sequence[Sequence[Example]]) -> Examples:
        """Several sequences of examples, one after the other, as one."""
        packed = [p if isinstance(p, Examples) else Examples.pack(p) for p in parts]
        if not packed:
            return Examples.pack([])
        offsets = np.cumsum([0] + [len(p._ids) for p in packed[:-1]])
        starts = [p._starts[:-1] + off for p, off in zip(packed, offsets, strict=True)]
        starts.append(np.asarray([sum(len(p._ids) for p in packed)], dtype=np.int64))
        return cls(
            np.concatenate([p._ids for p in packed]),
            np.concatenate([p._labels for p in packed]),
            np.concatenate(starts),
        )

    def __len__(self) -> int:
        return len(self._starts) - 1

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> Examples: ...

    def __getitem__(self, index: int | slice) -> Example | Examples:
        if isinstance(index, slice):
            first, stop, step = index.indices(len(self))
            if step != 1:
                return Examples.pack(self[i] for i in range(first, stop, step))
            stop = max(first, stop)
            lo, hi = int(self._starts[first]), int(self._starts[stop])
            return Examples(
                self._ids[lo:hi], self._labels[lo:hi], self._starts[first : stop + 1] - lo
            )
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"example {index} of {n}")
        row = index % n
        lo, hi = int(self._starts[row]), int(self._starts[row + 1])
        return Example(self._ids[lo:hi].tolist(), self._labels[lo:hi].tolist())

    def __iter__(self) -> Iterator[Example]:
        for row in range(len(self)):
            yield self[row]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __add__(self, other: Sequence[Example]) -> Examples:
        return Examples.concat([self, other])

    def __radd__(self, other: Sequence[Example]) -> Examples:
        return Examples.concat([other, self])

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Examples({len(self)} examples, {self.tokens} tokens)"

    @property
    def tokens(self) -> int:
        """Input tokens over every example."""
        return len(self._ids)

    @property
    def label_tokens(self) -> int:
        """Tokens that carry a label (take a loss)."""
        return int(np.count_nonzero(self._labels != IGNORE_INDEX))

    @property
    def nbytes(self) -> int:
        """Bytes the arrays hold."""
        return int(self._ids.nbytes + self._labels.nbytes + self._starts.nbytes)
