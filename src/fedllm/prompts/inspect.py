"""A readable view of a learned soft prompt: the vocabulary tokens nearest each virtual token.

Similarity is the cosine between a virtual token's embedding and each row of
the model's input embedding matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from rich.markup import escape
from rich.table import Table
from transformers import PreTrainedTokenizerBase

SUPPORTED = ("prompt", "ptuning")
"""Methods whose virtual tokens live in the input embedding space."""

DEFAULT_K = 5


class InspectError(ValueError):
    """A run or model with no soft prompt to inspect."""


@dataclass(frozen=True)
class Neighbour:
    """A vocabulary token near a virtual token.

    Attributes:
        token_id: its id.
        token: its text (``tokenizer.decode``).
        similarity: cosine similarity, in [-1, 1].
    """

    token_id: int
    token: str
    similarity: float


def check_supported(kind: str) -> None:
    """Raise unless method ``kind`` has virtual tokens in the input embedding space.

    Raises:
        InspectError: naming the method and the supported ones.
    """
    if kind not in SUPPORTED:
        raise InspectError(
            f"method.kind = {kind!r} has no virtual tokens to inspect; inspect shows soft "
            f"prompts of {' and '.join(repr(k) for k in SUPPORTED)} runs"
        )


def prompt_embeddings(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The virtual-token embeddings ``[virtual tokens, hidden]`` of a peft prompt model
    and its input embedding matrix ``[vocabulary, hidden]``.

    Raises:
        InspectError: the model has no soft prompt in the input embedding space.
    """
    if not isinstance(model, PeftModel) or not model.active_peft_config.is_prompt_learning:
        raise InspectError(f"{type(model).__name__} has no soft prompt (not a peft prompt model)")
    peft_model: Any = model  # peft's methods are untyped
    virtual = peft_model.get_prompt_embedding_to_save(adapter_name="default")
    embedding = peft_model.get_base_model().get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding):
        raise InspectError(f"the base model's input embeddings are a {type(embedding).__name__}")
    vocab = embedding.weight.detach()
    if virtual.dim() != 2 or virtual.shape[-1] != vocab.shape[-1]:
        raise InspectError(
            f"the virtual tokens have shape {tuple(virtual.shape)}, not [n, {vocab.shape[-1]}]: "
            "they are not input embeddings (prefix tuning stores key/value prefixes)"
        )
    return virtual, vocab


def nearest_tokens(
    embeddings: torch.Tensor,
    vocab_matrix: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    k: int = DEFAULT_K,
) -> list[list[Neighbour]]:
    """The ``k`` vocabulary tokens most cosine-similar to each embedding, best first.

    Args:
        embeddings: ``[n, hidden]`` vectors (the virtual tokens).
        vocab_matrix: ``[vocabulary, hidden]`` input embeddings; row i is token id i.
        tokenizer: decodes token ids to text.
        k: neighbours per embedding (at most the vocabulary size).

    Raises:
        ValueError: ``k`` < 1, or the hidden sizes differ.
    """
    if k < 1:
        raise ValueError(f"k = {k}: must be at least 1")
    if embeddings.dim() != 2 or vocab_matrix.dim() != 2:
        raise ValueError("embeddings and vocab_matrix must both be 2-D [rows, hidden]")
    if embeddings.shape[1] != vocab_matrix.shape[1]:
        raise ValueError(
            f"hidden sizes differ: embeddings {embeddings.shape[1]}, vocabulary "
            f"{vocab_matrix.shape[1]}"
        )
    sims = F.normalize(embeddings.float(), dim=1) @ F.normalize(vocab_matrix.float(), dim=1).T
    values, ids = sims.topk(min(k, vocab_matrix.shape[0]), dim=1)
    return [
        [
            Neighbour(int(i), str(tokenizer.decode([int(i)])), float(v))
            for v, i in zip(row_values, row_ids, strict=True)
        ]
        for row_values, row_ids in zip(values, ids, strict=True)
    ]


def inspect_json(
    embeddings: torch.Tensor, vocab_matrix: torch.Tensor, neighbours: list[list[Neighbour]]
) -> dict[str, Any]:
    """JSON-ready view: per virtual token its norm and neighbours, and the mean vocabulary norm."""
    return {
        "virtual_tokens": [
            {
                "index": i,
                "norm": float(embeddings[i].float().norm()),
                "nearest": [
                    {"token_id": n.token_id, "token": n.token, "similarity": n.similarity}
                    for n in row
                ],
            }
            for i, row in enumerate(neighbours)
        ],
        "vocab_mean_norm": float(vocab_matrix.float().norm(dim=1).mean()),
    }


def neighbours_table(neighbours: list[list[Neighbour]], title: str) -> Table:
    """One row per virtual token: its nearest tokens with their similarity."""
    table = Table(title=title, caption="cosine similarity to the input embeddings")
    table.add_column("virtual token", justify="right")
    for rank in range(1, max((len(row) for row in neighbours), default=0) + 1):
        table.add_column(f"#{rank}")
    for i, row in enumerate(neighbours):
        table.add_row(str(i), *(escape(f"{n.token!r} {n.similarity:.2f}") for n in row))
    return table
