"""Config section of secure aggregation: ``[secagg]``."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedllm.settings import Section


class SecAggConfig(Section):
    enabled: bool = Field(
        False,
        description="Aggregate with SecAgg+ (Bell et al. 2020): the server learns only the sum "
        "of the updates (quantised into a ring, masked pairwise); needs server.weighting = "
        "'uniform' and a linear aggregator.",
    )
    bits: int = Field(
        31,
        ge=8,
        le=62,
        description="The ring Z_{2^bits} the updates are summed in; with clip_range it sets "
        "the fixed-point step 2 clip_range / (floor((2^bits - 1) / cohort) - 1). Up to 31 "
        "bits a masked entry travels in 4 bytes (as a float32 update), above in 8.",
    )
    clip_range: float = Field(
        0.05,
        gt=0,
        description="Each update entry is clipped to [-clip_range, clip_range] before "
        "quantisation (the entries' unit, e.g. a LoRA delta); a client whose entries are "
        "clipped warns in its own log (the share is a statistic of its update: never sent).",
    )
    degree: int | None = Field(
        None,
        ge=2,
        description="Neighbours per client (even, below the cohort); none: 2 ceil(log2 n), "
        "capped at the largest even number below n.",
    )
    threshold: int | None = Field(
        None,
        ge=2,
        description="Shares that recover a client's secrets, k/2 < t <= k; none: "
        "floor(2k/3) + 1. A surviving client tolerates k - t dropped neighbours.",
    )
    tolerated_colluders: int = Field(
        0,
        ge=0,
        description="With privacy.dp = 'central' (distributed DP): the clients that may "
        "collude with the server, subtracting their own noise, with the noise multiplier "
        "still holding. Each client adds std z C / sqrt(m), m = max(2, server.min_clients) "
        "- tolerated_colluders (>= 1): more colluders tolerated, more noise.",
    )
    roster: str | None = Field(
        None,
        description="On Flower: a roster file (TOML, [clients] client id = its node's "
        "authentication public key, OpenSSH or PEM; `fedllm certs roster` writes "
        "one) read by the server and every node. Each node then signs its advertised "
        "keys with its own key (auth-key=PATH in its node config) and every party verifies "
        "them against the roster, so a server cannot substitute keys; none: unsigned "
        "(secure against an honest-but-curious server only).",
    )

    @model_validator(mode="after")
    def _check_roster(self) -> SecAggConfig:
        if self.roster is not None and not self.enabled:
            raise ValueError(
                "secagg.roster signs the keys of secure aggregation, which is off: set "
                "secagg.enabled = true, or remove secagg.roster"
            )
        return self
