"""The per-message bookkeeping of a round: bytes, tokens, metrics, accepted and rejected."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from fedllm.client.disclosure import Disclosure, kept
from fedllm.message import Dropped, Message, Reply
from fedllm.types import ClientId, ClientUpdate, RoundRecord
from fedllm.wire import message_bytes, try_message_bytes

COUNTED = ("tokens", "label_tokens")
"""Client metrics summed over a round: input tokens processed (padding excluded), the
throughput and MFU base, and the label tokens the loss scored."""


class Tally:
    """Counts what a round sends and receives, from the real encoding of each message.

    Args:
        record: the round's record, filled in place.
        counts_bytes: False where nothing crosses a network (a client training alone,
            pooled data training where it lies).
        disclosure: what of the clients' metrics the record keeps: under a privacy
            mechanism only the public ones, and no training loss or token counts (the
            protocol still reads every metric that reached it, e.g. the clip's bits).
        public: the plug-ins' public metrics.
    """

    def __init__(
        self,
        record: RoundRecord,
        counts_bytes: bool = True,
        disclosure: Disclosure = "all",
        public: frozenset[str] = frozenset(),
    ) -> None:
        self.record = record
        self.counts_bytes = counts_bytes
        self.disclosure, self.public = disclosure, public
        self.client_metrics: dict[str, dict[str, float]] = {}
        self.losses: list[float] = []
        self.counts = dict.fromkeys(COUNTED, 0.0)
        self.start = time.perf_counter()

    def sent(self, messages: Mapping[ClientId, Message]) -> None:
        """Count the bytes of a phase's messages to clients."""
        if self.counts_bytes:
            self.record.bytes_down += sum(message_bytes(m) for m in messages.values())

    def received(self, client_id: ClientId, reply: Reply) -> None:
        """Count a reply's bytes; note a dropped client."""
        if isinstance(reply, Dropped):
            dropped = self.record.extra.setdefault("dropped", [])
            dropped.append({"client": client_id, "reason": reply.reason})
        elif self.counts_bytes:
            self.record.bytes_up += try_message_bytes(reply) or 0

    def trained(self, update: ClientUpdate) -> None:
        """Keep an arriving update's token counts and metrics (tokens count whether or
        not the update is then accepted: they were trained)."""
        for key in COUNTED:
            count = update.metrics.get(key)
            if isinstance(count, int | float) and math.isfinite(count) and count >= 0:
                self.counts[key] += count
        self.client_metrics[update.client_id] = dict(update.metrics)

    def reject(self, update: ClientUpdate, reason: str) -> None:
        """Record why an update was refused."""
        self.record.rejected.append({"client": update.client_id, "reason": reason})

    def accept(self, update: ClientUpdate) -> None:
        """Record an update that was folded in."""
        self.record.accepted.append(update.client_id)
        if "train_loss" in update.metrics:
            self.losses.append(update.metrics["train_loss"])

    def close(self) -> None:
        """Write the training time, mean loss, token counts (and each per second of
        training time) and client metrics into the record."""
        train_s = time.perf_counter() - self.start
        self.record.time_s["train"] = train_s
        self.record.extra["client_metrics"] = {
            client: kept(metrics, self.disclosure, self.public)
            for client, metrics in self.client_metrics.items()
        }
        if self.disclosure != "all":  # statistics of the cohort's data: not released
            return
        for key, count in self.counts.items():
            self.record.extra[key] = int(count)
            if count > 0 and train_s > 0:
                self.record.extra[f"{key}_per_s"] = count / train_s
        self.record.train_loss = sum(self.losses) / len(self.losses) if self.losses else None
