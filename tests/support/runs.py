"""Helpers shared by integration and equivalence tests: tiny configs, stripped metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedllm.config import Config, load_config
from fedllm.message import Reply
from fedllm.report.progress import SilentReporter
from fedllm.types import ClientId, RoundRecord

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"

VOLATILE = {
    "time_s",
    "peak_rss_mb",
    "run_dir",
    "final_dir",
    "wall_s",
    "tokens_per_s",
    "label_tokens_per_s",
    "mfu",
}


def tiny_config(*overrides: str) -> Config:
    """The shipped tiny recipe with overrides (seconds per run)."""
    return load_config(TINY, list(overrides))


def stable(value: Any) -> Any:
    """``value`` without wall-clock times and memory readings (which legitimately vary)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE and k != "train_s"}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


class InterruptAfter(SilentReporter):
    """Raises KeyboardInterrupt once round ``n`` is recorded: a crash between rounds."""

    def __init__(self, n: int) -> None:
        self.n = n

    def round_done(self, record: RoundRecord) -> None:
        if record.round == self.n:
            raise KeyboardInterrupt


class InterruptDuring(SilentReporter):
    """Raises KeyboardInterrupt at the ``replies``-th client reply of round ``n``: a
    crash inside a round, after part of it was played."""

    def __init__(self, n: int, replies: int = 1) -> None:
        self.n, self.replies, self.round = n, replies, 0

    def round_started(self, round_num: int, cohort_size: int) -> None:
        self.round = round_num

    def client_done(self, client_id: ClientId, reply: Reply) -> None:
        if self.round == self.n:
            self.replies -= 1
            if self.replies == 0:
                raise KeyboardInterrupt
