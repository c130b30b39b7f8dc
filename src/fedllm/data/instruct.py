"""Chat records with an instruction inserted, tokenized so that every instruction
is scored on exactly the same answer tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from transformers import PreTrainedTokenizerBase

from fedllm.data.format import IGNORE_INDEX, Example, encode_each_chat
from fedllm.data.sources import DataError

Placement = Literal["system", "prefix"]
"""``system``: the instruction is the system message; ``prefix``: it opens the first user turn."""

PLACEMENTS: tuple[str, ...] = get_args(Placement)
SEPARATOR = "\n\n"
"""Between the instruction and the text it is joined to."""

Chat = list[dict[str, str]]


def insert_instruction(messages: Chat, instruction: str, placement: str) -> Chat:
    """A copy of ``messages`` with ``instruction`` inserted.

    ``system``: a leading system message, or joined before an existing one's
    content. ``prefix``: joined before the content of the first user message.

    Raises:
        ValueError: an unknown placement, or ``prefix`` on a chat without a user turn.
    """
    out = [dict(m) for m in messages]
    if placement == "system":
        if out and out[0]["role"] == "system":
            out[0]["content"] = instruction + SEPARATOR + out[0]["content"]
        else:
            out.insert(0, {"role": "system", "content": instruction})
        return out
    if placement == "prefix":
        for message in out:
            if message["role"] == "user":
                message["content"] = instruction + SEPARATOR + message["content"]
                return out
        raise ValueError("placement 'prefix' needs a user message; this chat has none")
    raise ValueError(f"unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")


class InstructedEncoder:
    """Tokenizes a fixed set of chats under any instruction.

    Each chat's answer budget is the number of assistant tokens it keeps when
    encoded plainly at ``seq_len`` (as :func:`fedllm.data.build_federated_data`
    encodes it); chats left with none are skipped. Under an instruction a chat is
    encoded in full and cut right after its budget-th assistant token, so a long
    instruction never pushes answer tokens out: all instructions are scored on
    the same tokens.

    Args:
        chats: conversations, each a list of ``{"role", "content"}``.
        tokenizer: a fast tokenizer with a chat template.
        seq_len: the token limit of the plain encoding.
        placement: where instructions go (see :func:`insert_instruction`).
        max_examples: keep only the first this many scorable chats (None: all).
    """

    def __init__(
        self,
        chats: Sequence[Chat],
        tokenizer: PreTrainedTokenizerBase,
        seq_len: int,
        placement: str,
        max_examples: int | None = None,
    ) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(
                f"unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}"
            )
        plain = encode_each_chat(chats, tokenizer, seq_len)
        kept = [(chat, ex) for chat, ex in zip(chats, plain, strict=True) if ex is not None]
        kept = kept[:max_examples]
        self._chats = [chat for chat, _ in kept]
        self._plain = [ex for _, ex in kept]
        self._tokenizer = tokenizer
        self.placement = placement

    def __len__(self) -> int:
        """Scorable chats."""
        return len(self._plain)

    def encode(self, instruction: str | None) -> list[Example]:
        """The chats' examples with ``instruction`` inserted (None: as they are), each
        ending at its last answer token.

        Raises:
            DataError: the template tokenizes an answer differently once the
                instruction is in (the scored tokens would not be comparable).
        """
        if instruction is None:
            return [_cut_like(ex, ex) for ex in self._plain]
        chats = [insert_instruction(c, instruction, self.placement) for c in self._chats]
        full = encode_each_chat(chats, self._tokenizer, None)
        return [_cut_like(ex, plain) for ex, plain in zip(full, self._plain, strict=True)]


def _cut_like(example: Example | None, plain: Example) -> Example:
    """``example`` cut after as many labelled tokens as ``plain`` has, which must match."""
    want = [label for label in plain.labels if label != IGNORE_INDEX]
    if example is not None:
        labelled = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
        kept = labelled[: len(want)]
        if want and [example.labels[i] for i in kept] == want:
            end = kept[-1] + 1
            return Example(input_ids=example.input_ids[:end], labels=example.labels[:end])
    raise DataError(
        "the chat template tokenizes an assistant reply differently once an instruction "
        "is inserted; the instruction's effect on the answer cannot be measured"
    )
