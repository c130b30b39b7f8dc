"""Shared and personal parts of the trainable state.

Personal parameters never leave the client: they are split off before the
update is uploaded, kept in the client's own store across rounds, and merged
back in when the client trains or evaluates. Two ways to choose them:

* whole tensors whose names match glob patterns (``personal.keys``), e.g.
  ``["*layers.2?.*lora_B*"]`` keeps the last LoRA up-projections personal;
* the last ``personal.prompt_tokens`` virtual tokens of a soft prompt (rows of
  the prompt embedding), the rest of the prompt being shared.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace

import torch

from fedllm.algorithms.personal import PersonalConfig
from fedllm.client.store import ClientStateStore
from fedllm.types import ClientId, ClientUpdate, Params

ROWS_SUFFIX = "::personal_rows"
"""A personal key holding the trailing rows of the shared tensor of the same name."""

PROMPT_EMBEDDING = "*prompt_encoder*embedding.weight"
"""Name pattern of the virtual-token embedding of peft's prompt tuning, P-tuning and
prefix tuning (one row per virtual token)."""


class PersonalizationError(ValueError):
    """A personal split that does not fit the model's trainable state."""


@dataclass(frozen=True)
class PersonalSplit:
    """Which parts of the trainable state are personal.

    Attributes:
        patterns: glob patterns over parameter names; matches are personal.
        prompt_tokens: trailing virtual tokens of the soft prompt kept personal.
    """

    patterns: tuple[str, ...] = ()
    prompt_tokens: int = 0

    @classmethod
    def from_config(cls, cfg: PersonalConfig) -> PersonalSplit:
        return cls(tuple(cfg.keys), cfg.prompt_tokens)

    @property
    def active(self) -> bool:
        """True when anything is personal."""
        return bool(self.patterns) or self.prompt_tokens > 0

    def check(self, state: Params) -> None:
        """Refuse a split that selects nothing, everything, or a prompt that isn't there."""
        for pattern in self.patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in state):
                raise PersonalizationError(
                    f"personal.keys pattern {pattern!r} matches no trainable parameter; "
                    f"names look like {next(iter(state), '<none>')!r}"
                )
        if self.prompt_tokens:
            prompts = self._prompt_names(state)
            if not prompts:
                raise PersonalizationError(
                    "personal.prompt_tokens needs virtual tokens (method.kind = 'prompt', "
                    "'ptuning' or 'prefix'); this model has no virtual-token embedding"
                )
            for name in prompts:
                if self.prompt_tokens >= state[name].shape[0]:
                    raise PersonalizationError(
                        f"personal.prompt_tokens = {self.prompt_tokens} must be below the "
                        f"{state[name].shape[0]} virtual tokens, so some stay shared"
                    )
        shared, _ = self.split(state)
        if not shared:
            raise PersonalizationError("personal.keys select every parameter: nothing is shared")

    def split(self, full: Params) -> tuple[Params, Params]:
        """(shared, personal) parts of a full state (views, no copies)."""
        shared: Params = {}
        personal: Params = {}
        prompts = set(self._prompt_names(full)) if self.prompt_tokens else set()
        for name, tensor in full.items():
            if any(fnmatch.fnmatchcase(name, p) for p in self.patterns):
                personal[name] = tensor
            elif name in prompts:
                shared[name] = tensor[: -self.prompt_tokens]
                personal[name + ROWS_SUFFIX] = tensor[-self.prompt_tokens :]
            else:
                shared[name] = tensor
        return shared, personal

    def merge(self, shared: Params, personal: Params) -> Params:
        """The full state from its two parts (the inverse of :meth:`split`)."""
        full = dict(shared)
        for key, tensor in personal.items():
            if key.endswith(ROWS_SUFFIX):
                name = key.removesuffix(ROWS_SUFFIX)
                full[name] = torch.cat([shared[name], tensor])
            else:
                full[key] = tensor
        return full

    def _prompt_names(self, state: Params) -> list[str]:
        return [
            n for n, t in state.items() if fnmatch.fnmatchcase(n, PROMPT_EMBEDDING) and t.dim() == 2
        ]


class PersonalState:
    """The clients' personal parameters, each kept in its own client's store.

    Args:
        split: which parameters are personal.
        store: per-client persistent storage (on disk).
        initial: the personal part of the initial state (for clients not yet trained).
    """

    def __init__(self, split: PersonalSplit, store: ClientStateStore, initial: Params) -> None:
        self.split = split
        self.store = store
        self.initial = {k: v.clone() for k, v in initial.items()}

    def of(self, client_id: ClientId) -> Params:
        """The client's personal parameters (the initial ones before it first trains)."""
        return self.store.get(client_id) or self.initial

    def full_start(self, client_id: ClientId, shared: Params) -> Params:
        """The state a client trains from: the broadcast plus its own personal part."""
        return self.split.merge(shared, self.of(client_id))

    def keep(self, client_id: ClientId, update: ClientUpdate) -> ClientUpdate:
        """Store the personal part of a full update; return the shared part to upload."""
        shared, personal_delta = self.split.split(update.delta)
        own = self.of(client_id)
        with torch.no_grad():
            self.store.put(client_id, {k: own[k] + personal_delta[k] for k in own})
        return replace(update, delta=shared)
