"""Config section of differential privacy: ``[privacy]``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedllm.data.canary import SECRET, CanarySpec
from fedllm.data.settings import LongRecords
from fedllm.settings import Section

CANARY_KEYS = (
    "canary_repeats",
    "canary_clients",
    "canary_template",
    "canary_digits",
    "canary_candidates",
    "canary_controls",
)
"""The canary settings; any value but their default needs ``privacy.canaries`` > 0."""


class PrivacyConfig(Section):
    dp: Literal["none", "central", "local"] = Field(
        "none",
        description="'central': user-level DP-FedAvg (each client's update clipped to "
        "clip_norm, Gaussian noise on the aggregate; needs server.weighting = 'uniform'); "
        "'local': record-level DP-SGD inside every client (each example's gradient clipped "
        "to clip_norm, noise on every step; each client its own epsilon); 'none': off.",
    )
    clip_norm: float | None = Field(
        None,
        gt=0,
        description="'central': the L2 bound of each client's whole update (the initial bound "
        "with adaptive_clip); 'local': of each example's gradient.",
    )
    noise_multiplier: float | None = Field(
        None,
        ge=0,
        description="Noise std / clip_norm (z). None: the smallest z that spends "
        "target_epsilon in server.rounds rounds, derived before training.",
    )
    target_epsilon: float | None = Field(
        None,
        gt=0,
        description="The privacy budget at delta. With noise_multiplier: the run stops before "
        "the round that would exceed it (also across resume). Without: derives the noise.",
    )
    delta: float = Field(
        1e-5,
        gt=0,
        lt=1,
        description="The delta of (epsilon, delta)-DP; keep it below 1 / clients ('central') "
        "or 1 / examples per client ('local').",
    )
    accountant: Literal["rdp", "pld"] = Field(
        "rdp",
        description="'rdp' (Renyi DP; every sampling) or 'pld' (privacy loss distributions, "
        "tighter; needs server.sampling = 'poisson' when a round samples part of the clients, "
        "and is not used by 'local', whose batches are fixed-size).",
    )
    adaptive_clip: bool = Field(
        False,
        description="'central': move clip_norm each round toward the clip_quantile of the "
        "update norms, estimated privately (Andrew et al. 2021).",
    )
    clip_quantile: float = Field(
        0.5, gt=0, lt=1, description="adaptive_clip: the quantile of update norms targeted."
    )
    clip_lr: float = Field(
        0.2, gt=0, description="adaptive_clip: the geometric learning rate of the clip norm."
    )
    clip_count_noise: float | None = Field(
        None,
        ge=0,
        description="adaptive_clip: std of the noise on the count of unclipped updates; "
        "none: expected cohort / 20 (Andrew et al.). Part of the privacy cost: the update's "
        "noise is raised so the two together spend noise_multiplier.",
    )
    long_records: LongRecords = Field(
        "truncate",
        description="'local': every training example is one record (never packed with "
        "another), so epsilon is per record; a record longer than data.seq_len tokens is "
        "'truncate'd to it (counted in the data summary, with a warning) or 'refuse'd "
        "(the data build stops, naming how many).",
    )

    canaries: int = Field(
        0,
        ge=0,
        le=1000,
        description="Leakage audit (`fedllm audit`): distinct random canaries inserted into the "
        "training split of privacy.canary_clients (round-robin: canary i goes to client i mod "
        "their number), never into held-out data; 0: none (the data is untouched).",
    )
    canary_repeats: int = Field(
        1,
        ge=1,
        le=10000,
        description="Copies of each canary in its client's training split.",
    )
    canary_clients: list[str] = Field(
        default_factory=list,
        description="Client ids that get canaries (checked against the federation when the "
        "data is built); empty: the first client in sorted id order.",
    )
    canary_template: str = Field(
        "my secret code is {secret}",
        description="A canary's text: '{secret}' (once, after some text: the prefix an "
        "extraction prompts with) becomes canary_digits random digits drawn from the run "
        "seed. Chat data: the assistant's reply to a fixed user turn; text data: a record.",
    )
    canary_digits: int = Field(
        6,
        ge=1,
        le=18,
        description="Digits of each secret: the secret space has 10^canary_digits members.",
    )
    canary_candidates: int = Field(
        1000,
        ge=10,
        le=1_000_000,
        description="Secrets each canary is ranked among for its exposure: the whole space "
        "when 10^canary_digits is at most this (an exact rank), else this many sampled ones "
        "(an estimated rank, plus a skew-normal extrapolation).",
    )
    canary_controls: int = Field(
        1,
        ge=0,
        le=1000,
        description="Control canaries: drawn like the others but inserted nowhere; their "
        "exposure is what an unseen secret scores (the audit's baseline).",
    )

    def per_record(self) -> LongRecords | None:
        """How the data build makes training examples: one per record (and what to do
        with a record longer than ``data.seq_len``) under record-level DP-SGD, whose
        epsilon is per example; None (text packed) otherwise."""
        return self.long_records if self.dp == "local" else None

    def canary_spec(self) -> CanarySpec | None:
        """The canaries to insert, for the data build; None when ``canaries`` is 0."""
        if self.canaries == 0:
            return None
        return CanarySpec(
            count=self.canaries,
            repeats=self.canary_repeats,
            clients=tuple(self.canary_clients),
            template=self.canary_template,
            digits=self.canary_digits,
            controls=self.canary_controls,
            candidates=self.canary_candidates,
        )

    @model_validator(mode="after")
    def _check_canaries(self) -> PrivacyConfig:
        if self.canaries == 0:
            fields = type(self).model_fields
            set_keys = [
                key
                for key in CANARY_KEYS
                if getattr(self, key) != fields[key].get_default(call_default_factory=True)
            ]
            if set_keys:
                raise ValueError(
                    f"privacy.{', privacy.'.join(set_keys)} set with privacy.canaries = 0; "
                    "set privacy.canaries to the number of canaries to insert, or remove them"
                )
            return self
        template = self.canary_template
        if template.count(SECRET) != 1:
            raise ValueError(
                f"privacy.canary_template = {template!r} must hold {SECRET!r} exactly once "
                "(where the random secret goes), e.g. 'my secret code is {secret}'"
            )
        if not template.split(SECRET)[0].strip():
            raise ValueError(
                f"privacy.canary_template = {template!r} needs text before {SECRET!r}: the "
                "prefix an extraction prompts with, e.g. 'my secret code is {secret}'"
            )
        if any("{" in part or "}" in part for part in template.split(SECRET)):
            raise ValueError(
                f"privacy.canary_template = {template!r}: braces other than {SECRET!r} are "
                "not allowed"
            )
        space = 10**self.canary_digits
        if self.canaries + self.canary_controls > space:
            raise ValueError(
                f"privacy.canaries + privacy.canary_controls = "
                f"{self.canaries + self.canary_controls} distinct secrets do not fit in "
                f"10^{self.canary_digits}; raise privacy.canary_digits"
            )
        if len(set(self.canary_clients)) != len(self.canary_clients):
            raise ValueError(
                f"privacy.canary_clients = {self.canary_clients} names a client twice; "
                "name each once"
            )
        return self

    @model_validator(mode="after")
    def _check_settings(self) -> PrivacyConfig:
        if self.dp != "local" and self.long_records != "truncate":
            raise ValueError(
                f"privacy.long_records = {self.long_records!r} applies to privacy.dp = "
                "'local' (one record per example); remove it, or set privacy.dp = 'local'"
            )
        if self.dp == "none":
            set_keys = [
                key
                for key in ("clip_norm", "noise_multiplier", "target_epsilon")
                if getattr(self, key) is not None
            ]
            if self.adaptive_clip:
                set_keys.append("adaptive_clip")
            if set_keys:
                raise ValueError(
                    f"privacy.{', privacy.'.join(set_keys)} set with privacy.dp = 'none'; "
                    "set privacy.dp = 'central' or 'local', or remove them"
                )
            return self
        if self.clip_norm is None:
            raise ValueError(
                f"privacy.dp = {self.dp!r} needs privacy.clip_norm (the L2 bound its "
                "guarantee rests on), e.g. privacy.clip_norm = 0.1"
            )
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError(
                f"privacy.dp = {self.dp!r} needs privacy.noise_multiplier, or "
                "privacy.target_epsilon to derive it from"
            )
        if self.dp == "local" and self.accountant == "pld":
            raise ValueError(
                "privacy.dp = 'local' draws fixed-size lots, which only the RDP accountant "
                "models: set privacy.accountant = 'rdp'"
            )
        if self.adaptive_clip and self.dp != "central":
            raise ValueError(
                "privacy.adaptive_clip applies to privacy.dp = 'central' (the clip of whole "
                "updates); remove it, or set privacy.dp = 'central'"
            )
        return self
