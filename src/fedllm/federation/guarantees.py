"""What a run's privacy mechanisms promise, in words: the start banner's privacy line
and the ``randomness`` block of ``summary.json``."""

from __future__ import annotations

from typing import Any

from fedllm.components import ALGORITHMS, load_builtin
from fedllm.config import RANDOMNESS_MEANING, Config


def randomness_summary(config: Config) -> dict[str, Any]:
    """Which ``run.randomness`` the run used and what that means (``summary.json``)."""
    mode = config.randomness
    return {"mode": mode, "configured": config.run.randomness, "meaning": RANDOMNESS_MEANING[mode]}


def privacy_banner(config: Config) -> str:
    """The banner's privacy line (empty without a privacy mechanism): what each
    algorithm the config turns on guarantees, against whom (its ``guarantee(config)``),
    and where the randomness comes from."""
    if not config.guards_privacy:
        return ""
    load_builtin()
    parts: list[str] = []
    for name in ALGORITHMS.names():
        factory = ALGORITHMS.get(name)()
        describe = getattr(factory, "guarantee", None)
        if describe is None or factory.setting(config) is None:
            continue
        line = describe(config)
        if line:
            parts.append(line)
    mode = config.randomness
    source = "OS CSPRNG" if mode == "secure" else "derived from the seed: recomputable"
    parts.append(f"randomness {mode} ({source})")
    return "privacy: " + "; ".join(parts)
