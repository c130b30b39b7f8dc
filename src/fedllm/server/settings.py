"""Config section of the server: ``[server]`` (rounds, sampling, aggregation,
the server optimizer, simulated dropouts)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedllm.settings import Section

DROPPABLE_PHASES = (
    "train",
    "secagg/advertise",
    "secagg/share",
    "secagg/masked",
    "secagg/unmask",
    "he/train",
    "he/decrypt",
)
"""The round phases a simulated client can drop in (evaluation never drops); the
names of :data:`fedllm.client.side.TRAIN`, :data:`fedllm.secure.secagg.parts.PHASES` and
:data:`fedllm.secure.he.parts.PHASES`."""


class ServerConfig(Section):
    rounds: int = Field(3, ge=1, description="Federated rounds.")
    clients_per_round: int = Field(2, ge=1, description="Clients sampled each round (seeded).")
    min_clients: int = Field(
        1, ge=1, description="Fewest accepted updates for a round to change the model."
    )
    reply_timeout_s: float | None = Field(
        None,
        gt=0,
        description="On Flower: seconds a phase waits for its replies; a node that has not "
        "answered by then is dropped (the round goes on if min_clients replied); none: wait "
        "for every node. The simulator ignores it.",
    )
    optimizer: str = Field(
        "fedavg",
        description="Server optimizer on the pseudo-gradient: fedavg, fedavgm, fedadam, fedyogi, "
        "fedadagrad, or nesterov (DiLoCo's outer Nesterov momentum; paper: lr 0.7, momentum 0.9).",
    )
    lr: float = Field(1.0, gt=0, description="Server learning rate (eta).")
    momentum: float = Field(
        0.9, ge=0, lt=1, description="Server momentum of 'fedavgm' and 'nesterov'."
    )
    beta1: float = Field(
        0.9, ge=0, lt=1, description="First-moment decay of fedadam/fedyogi/fedadagrad."
    )
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay of fedadam/fedyogi.")
    tau: float = Field(
        1e-3,
        gt=0,
        description="Adaptivity floor of fedadam/fedyogi/fedadagrad (v starts at tau^2).",
    )
    bias_correction: bool = Field(
        False, description="Adam-style bias correction (off in Reddi et al. 2021, Algorithm 2)."
    )
    aggregator: str = Field("mean", description="How accepted updates are combined.")
    normalize: Literal["none", "fednova", "fednova_steps"] = Field(
        "none",
        description="'fednova': each client divides its update by a_i, the L1 norm of its "
        "SGD gradient coefficients (momentum, FedProx, weight decay and the learning-rate "
        "schedule included), the server rescales the mean by the cohort's effective steps "
        "(Wang et al. 2020); needs client.optimizer = 'sgd'. 'fednova_steps': a_i = the "
        "learning-rate-weighted local steps for any optimizer (AdamW), a heuristic outside "
        "the paper. For clients running different step counts.",
    )
    keep_updates: bool = Field(
        False,
        description="Update forensics: write each round's accepted client updates (with ids "
        "and weights) and the aggregate the rule made of them to updates/round_<r>.safetensors "
        "in the run directory, with a JSON sidecar; refused with secagg and he, which hide "
        "individual updates. Disk: one update per client per round.",
    )
    weighting: Literal["examples", "uniform"] = Field(
        "examples", description="Aggregation weight of each client."
    )
    sampling: Literal["uniform", "size", "trace", "poisson"] = Field(
        "uniform",
        description="How each round's clients are drawn (seeded): 'uniform'; 'size': "
        "successively, proportional to training examples; 'trace': uniformly among the "
        "clients online that round (availability_file, else availability); 'poisson': each "
        "client independently with probability clients_per_round / clients (what DP "
        "accounts as Poisson subsampling; the cohort size varies).",
    )
    availability: float = Field(
        1.0,
        gt=0,
        le=1,
        description="'trace' without availability_file: probability that a client is online "
        "in a round (independently per client and round, seeded).",
    )
    availability_file: str | None = Field(
        None,
        description="'trace': JSON file mapping every round to the client ids online in it, "
        'e.g. {"1": ["a", "b"], "2": []}; none: the seeded availability draw.',
    )
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Simulated dropouts: probability that a sampled client never answers in a "
        "round (seeded per round and client); 0: none. For testing protocols with dropouts.",
    )
    dropout_trace: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Simulated dropouts by round instead of the draw, e.g. {"2" = ["a"]}: '
        "client a drops in round 2.",
    )
    dropout_phases: list[str] = Field(
        default_factory=list,
        description="The phases simulated dropouts happen in (e.g. ['secagg/masked']: the "
        "client answers the earlier phases, then drops); empty: every phase.",
    )

    @model_validator(mode="after")
    def _check_dropout(self) -> ServerConfig:
        unknown = [p for p in self.dropout_phases if p not in DROPPABLE_PHASES]
        if unknown:
            raise ValueError(
                f"server.dropout_phases: unknown phase(s) {unknown}; use some of "
                f"{list(DROPPABLE_PHASES)}"
            )
        bad = [key for key in self.dropout_trace if not key.isdigit() or int(key) < 1]
        if bad:
            raise ValueError(f"server.dropout_trace keys must be round numbers >= 1, got {bad}")
        if self.dropout_trace and self.dropout > 0:
            raise ValueError(
                f"server.dropout = {self.dropout} and server.dropout_trace are both set; "
                "the trace says who drops: remove server.dropout"
            )
        return self

    @model_validator(mode="after")
    def _check_sampling(self) -> ServerConfig:
        if self.sampling != "trace" and (
            self.availability_file is not None or self.availability != 1.0
        ):
            key = "availability_file" if self.availability_file is not None else "availability"
            raise ValueError(
                f"server.{key} applies to server.sampling = 'trace', not "
                f"{self.sampling!r}; set server.sampling = 'trace' or remove server.{key}"
            )
        if self.availability_file is not None and self.availability != 1.0:
            raise ValueError(
                f"server.availability = {self.availability} and server.availability_file are "
                "both set; the file says who is online: remove server.availability"
            )
        return self
