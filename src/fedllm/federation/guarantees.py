"""What a run's privacy mechanisms promise, in words: the start banner's privacy line
and the ``randomness`` block of ``summary.json``."""

from __future__ import annotations

from typing import Any

from fedllm.config import RANDOMNESS_MEANING, Config


def randomness_summary(config: Config) -> dict[str, Any]:
    """Which ``run.randomness`` the run used and what that means (``summary.json``)."""
    mode = config.randomness
    return {"mode": mode, "configured": config.run.randomness, "meaning": RANDOMNESS_MEANING[mode]}


def privacy_banner(config: Config) -> str:
    """The banner's privacy line (empty without a privacy mechanism): the mechanisms,
    their threat model, and where their randomness comes from."""
    if not config.guards_privacy:
        return ""
    parts: list[str] = []
    privacy = config.privacy
    if privacy.dp == "central":
        parts.append(
            "user-level DP-FedAvg (central noise"
            + (", added by the clients under SecAgg)" if config.secagg.enabled else ")")
        )
    elif privacy.dp == "local":
        parts.append("record-level DP-SGD in every client")
    if config.secagg.enabled:
        from fedllm.secure.params import collusion_statement, threat_model

        # a roster (Flower only) makes every node sign its keys and verify its neighbours'
        parts.append(threat_model(signed=config.secagg.roster is not None))
        if privacy.dp == "central":
            colluders = config.secagg.tolerated_colluders
            parts.append(collusion_statement(config.server.min_clients, colluders))
    if config.he.enabled:
        parts.append("CKKS aggregation (the server adds ciphertexts; a client decrypts)")
    mode = config.randomness
    source = "OS CSPRNG" if mode == "secure" else "derived from the seed: recomputable"
    parts.append(f"randomness {mode} ({source})")
    return "privacy: " + "; ".join(parts)
