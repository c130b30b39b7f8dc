"""Helpers shared by integration and equivalence tests: tiny configs, stripped metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedllm.config import Config, load_config
from fedllm.report.progress import SilentReporter
from fedllm.types import RoundRecord

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
