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


def accounting_line(ledger: dict[str, Any]) -> str:
    """The banner's accounting line from a privacy ledger's summary: the noise
    multiplier (and whether it was derived), delta, the accountant, and the sampling
    with its neighbouring relation; empty without a central-DP or DP-SGD ledger."""
    if "noise_multiplier" not in ledger:
        return ""
    z = ledger["noise_multiplier"]
    derived = " (derived from the budget)" if ledger.get("noise_multiplier_derived") else ""
    budget = ledger.get("target_epsilon")
    parts = [
        f"{ledger.get('level', 'user')}-level",
        f"noise multiplier {z:.4g}{derived}",
        f"delta {ledger['delta']:g}",
        f"accountant {ledger['accountant'].upper()}",
    ]
    if budget is not None:
        parts.append(f"budget epsilon {budget:g}")
    sampling = ledger["sampling"]
    if sampling == "poisson":
        parts.append(
            f"about {ledger['cohort']} of {ledger['clients']} clients per round (Poisson, "
            "add-or-remove neighbours)"
        )
    elif sampling == "fixed":
        parts.append(
            f"{ledger['cohort']} of {ledger['clients']} clients per round (fixed size, "
            "replace-one neighbours: sensitivity 2C)"
        )
    else:
        parts.append(f"{sampling} (replace-one neighbours)")
    return "accounting: " + ", ".join(parts)
