"""Config section of simulated attacks: ``[attack]``, and each attack's
``[attack.<name>]`` table.

An attack is a research tool: it makes some clients of a *simulated* federation
malicious, so that defenses can be measured against it. Two kinds compose:

- a **data** attack (``attack.data``) changes training records before they are
  tokenized (a backdoor trigger, replaced responses, harmful-compliance pairs);
- an **update** attack (``attack.update``) changes what a malicious client sends
  (sign flip, scaling, ALIE, IPM, free riding).

A malicious client may also train with its own budget (``attack.local_steps``,
``attack.lr``: :mod:`fedllm.security.attacks.budget`).

Which clients are malicious: ``attack.clients`` by name, or ``attack.fraction`` of
the federation drawn from the run seed (:func:`fedllm.security.attacks.targets.malicious_clients`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fedllm.settings import Section

NO_ATTACK = "none"


class AttackConfig(Section):
    data: str = Field(
        NO_ATTACK,
        description="The data poisoning attack malicious clients (or, with placement = "
        "'everywhere', every client) apply to their training records: a registered data "
        "attack's name, or 'none'.",
    )
    update: str = Field(
        NO_ATTACK,
        description="The model poisoning attack malicious clients apply to the update they "
        "send: a registered update attack's name, or 'none'.",
    )
    fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of the federation's clients that are malicious, drawn from the run "
        "seed (rounded to the nearest count); ignored when 'clients' names them.",
    )
    clients: list[str] = Field(
        default_factory=list,
        description="The malicious clients by id; empty: 'fraction' of them, drawn.",
    )
    from_round: int = Field(
        1,
        ge=1,
        description="The first round in which update attacks act and malicious clients "
        "train with their own budget (local_steps, lr); data attacks poison the records "
        "once, before training.",
    )
    placement: Literal["malicious", "everywhere"] = Field(
        "malicious",
        description="Where a data attack's poisoned records go: 'malicious' (concentrated in "
        "the malicious clients' data) or 'everywhere' (a small share of every client's "
        "data: poisoning at collection, which no client knows of).",
    )
    share: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Share of each affected client's training records a data attack poisons.",
    )
    local_steps: int | None = Field(
        None,
        ge=1,
        description="Optimizer steps per round of each malicious client, from 'from_round' "
        "on (an attacker trains as long as it likes: Bagdasaryan et al.'s backdoor "
        "clients train longer); none: the recipe's budget, like every client.",
    )
    lr: float | None = Field(
        None,
        gt=0.0,
        description="Base learning rate of each malicious client's local optimizer, from "
        "'from_round' on (the schedule still applies to it); none: client.lr.",
    )
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="[attack.<name>] tables: an attack's own settings (its registered "
        "`settings` model), checked at load.",
    )

    @model_validator(mode="before")
    @classmethod
    def _gather_tables(cls, data: Any) -> Any:
        """``[attack.<name>]`` tables arrive as dict-valued keys of ``[attack]``: they are
        the attacks' settings."""
        if not isinstance(data, dict):
            return data
        tables = {k: v for k, v in data.items() if isinstance(v, dict) and k != "settings"}
        if not tables:
            return data
        rest = {k: v for k, v in data.items() if k not in tables}
        return {**rest, "settings": {**data.get("settings", {}), **tables}}

    @model_validator(mode="after")
    def _check_who(self) -> AttackConfig:
        if self.clients and self.fraction:
            raise ValueError(
                "attack.clients and attack.fraction both choose the malicious clients; "
                "set one of them"
            )
        return self

    @property
    def on(self) -> bool:
        """Some attack is configured (it may still have no malicious client)."""
        return self.data != NO_ATTACK or self.update != NO_ATTACK
