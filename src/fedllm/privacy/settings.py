"""Config section of differential privacy: ``[privacy]``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedllm.settings import Section


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

    @model_validator(mode="after")
    def _check_settings(self) -> PrivacyConfig:
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
