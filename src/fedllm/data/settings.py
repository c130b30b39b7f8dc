"""Config sections of the data: ``[data]`` (the clients' corpus and partition) and
``[public]`` (a public corpus the server holds)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, PrivateAttr, model_validator

from fedllm.settings import Section

if TYPE_CHECKING:
    from fedllm.data.canary import CanarySpec

LongRecords = Literal["truncate", "refuse"]
"""What a data build making one example per record does with a record longer than
``seq_len``: cut it (with a warning counting them) or refuse the data."""


class DataConfig(Section):
    source: str = Field(
        "chitchat",
        description="'chitchat', 'chatterbot', 'pydoc', or a path to a .jsonl/.txt file.",
    )
    partition: str = Field(
        "natural",
        description="How records are split among clients: 'natural' (one client per value of "
        "partition_by), 'iid', 'dirichlet' (label skew over partition_by), 'shards' (each "
        "client gets exactly labels_per_client values of partition_by), 'quantity' (size "
        "skew, labels iid) or 'topic' (Dirichlet over topics clustered from the text).",
    )
    partition_by: str = Field(
        "user",
        description="Field used by 'natural' (client id), 'dirichlet' and 'shards' (label); "
        "chitchat has 'user', chatterbot 'category', pydoc 'topic'.",
    )
    num_clients: int = Field(
        4, ge=1, description="Clients to create; for 'natural', the largest groups are kept."
    )
    dirichlet_alpha: float = Field(
        0.5,
        gt=0,
        description="Dirichlet concentration of 'dirichlet' and 'topic' (smaller: more skew).",
    )
    labels_per_client: int = Field(
        2, ge=1, description="'shards': distinct values of partition_by each client gets."
    )
    quantity_skew: Literal["powerlaw", "lognormal"] = Field(
        "powerlaw",
        description="'quantity': client sizes by rank, the k-th largest (k = 1, 2...) "
        "proportional to k^-quantity_exponent ('powerlaw'), or drawn log-normal with "
        "quantity_sigma ('lognormal', seeded).",
    )
    quantity_exponent: float = Field(
        1.0, ge=0, description="'quantity' powerlaw exponent (0: equal sizes)."
    )
    quantity_sigma: float = Field(
        1.0, ge=0, description="'quantity' lognormal sigma of log-size (0: equal sizes)."
    )
    num_topics: int = Field(
        8, ge=2, description="'topic': topics found by TF-IDF + k-means over the records' text."
    )
    min_client_examples: int = Field(
        4, ge=1, description="Smallest client (train + eval examples) kept."
    )
    max_examples_per_client: int | None = Field(
        None, ge=1, description="Cap on each client's examples (seeded subsample)."
    )
    seq_len: int = Field(64, ge=8, description="Tokens per example (truncate / pack).")
    format: Literal["auto", "text"] = Field(
        "auto",
        description="'auto': chat records become SFT examples (loss on assistant replies), "
        "text records packed blocks; 'text': every record's text (chat messages joined by "
        "newlines) packed into blocks with loss on every token (continued pre-training).",
    )
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of each client's examples held out for eval."
    )
    test_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of all examples held out as the global test split."
    )
    max_test_examples: int | None = Field(
        64, ge=1, description="Cap on the global test split (evaluation cost)."
    )
    max_eval_examples: int | None = Field(
        32, ge=1, description="Cap on each client's eval split (evaluation cost)."
    )
    _canaries: CanarySpec | None = PrivateAttr(None)

    @property
    def canary_spec(self) -> CanarySpec | None:
        """The canaries the build inserts (set from ``[privacy]`` by the top-level config,
        not a key of ``[data]``); None: none."""
        return self._canaries

    def link_canaries(self, spec: CanarySpec | None) -> None:
        """Set :attr:`canary_spec` (the top-level config's link from ``[privacy]``)."""
        self._canaries = spec


class PublicConfig(Section):
    """Public data: a corpus the server holds (and anyone may hold), beside the private
    data of ``[data]``. Its modes combine freely."""

    source: str | None = Field(
        None,
        description="Public corpus: 'pydoc', 'chitchat', 'chatterbot', or a .jsonl/.txt path; "
        "tokenized like [data] (text packed into seq_len blocks). Must differ from "
        "data.source (the two must not share text); none: no public data.",
    )
    max_examples: int | None = Field(
        None,
        ge=1,
        description="Most public training examples (packed blocks or chats, from a seeded "
        "shuffle of the corpus); none: all.",
    )
    eval_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of the public corpus's records held out; every evaluation reports "
        "its perplexity as public_ppl.",
    )
    max_eval_examples: int | None = Field(
        64, ge=1, description="Cap on the public held-out examples (evaluation cost)."
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="Steps the server trains the global model on public data before round 1 "
        "(reported as public_warmup on round 1's line; a resumed run does not redo it).",
    )
    server_steps: int = Field(
        0,
        ge=0,
        description="Steps the server trains on public data each round, from the broadcast; "
        "its change joins the clients' as a participant weighted server_weight.",
    )
    server_weight: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share lambda of the server's public update in each round's combined "
        "update: (1 - lambda) x (mean of the clients') + lambda x (the server's); "
        "needs server_steps > 0.",
    )
    mix_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of every client batch drawn from the public corpus (each client "
        "holds a copy): round(mix_ratio x client.batch_size) public examples per batch, "
        "the rest private.",
    )

    def public_per_batch(self, batch_size: int) -> int:
        """Public examples in each client micro-batch of ``batch_size``."""
        return round(self.mix_ratio * batch_size)

    @model_validator(mode="after")
    def _check_modes(self) -> PublicConfig:
        used = [
            f"public.{key} = {getattr(self, key)}"
            for key in ("warmup_steps", "server_steps", "mix_ratio")
            if getattr(self, key) > 0
        ]
        if used and self.source is None:
            raise ValueError(
                f"{', '.join(used)} needs a public corpus, but public.source is none; set "
                "public.source (e.g. 'pydoc', or a .txt/.jsonl path)"
            )
        default_weight = type(self).model_fields["server_weight"].default
        if self.server_steps == 0 and self.server_weight != default_weight:
            raise ValueError(
                f"public.server_weight = {self.server_weight} weighs the server's public "
                "update, but public.server_steps = 0 (the server trains none); set "
                "public.server_steps > 0 or remove public.server_weight"
            )
        return self
