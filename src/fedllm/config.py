"""The run configuration: a typed schema, TOML loading and ``--set`` overrides.

Unknown keys, wrong types and unknown component names fail at load with the
key, the bad value and what would be valid.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import tomli_w
import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration that cannot be run, with a message naming the key."""


NONE = "none"
"""TOML has no null: optional fields take the string "none" to mean unset."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _none_word(cls, value: Any, info: ValidationInfo) -> Any:
        if value == NONE and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if type(None) in get_args(annotation):
                return None
        return value


class ModelConfig(Section):
    name: str = Field(
        "smollm2-135m",
        description="Base model: 'smollm2-135m' (shipped GGUF), a randomly initialised preset "
        "(tiny: 'tiny', 'tiny-4l'; to pre-train: 'llama-5m', 'llama-20m', 'llama-60m'), "
        "a local directory or a hub id.",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Dtype the base weights are held in."
    )
    tokenizer: Literal["default", "bpe"] = Field(
        "default",
        description="'default': the model's own tokenizer (SmolLM2's for presets); 'bpe': a "
        "byte-level BPE tokenizer trained on the pydoc corpus with vocab_size tokens, cached "
        "(presets only; the model's vocabulary follows it).",
    )
    vocab_size: int | None = Field(
        None,
        ge=259,
        description="Tokens of the 'bpe' tokenizer, 256 bytes and 3 special tokens included "
        "(pydoc gives at most about 9,000); none: 8192.",
    )
    num_layers: int | None = Field(
        None, ge=1, description="Presets only: transformer layers; none: the preset's."
    )
    hidden_size: int | None = Field(
        None, ge=1, description="Presets only: hidden width; none: the preset's."
    )
    num_heads: int | None = Field(
        None, ge=1, description="Presets only: attention heads; none: the preset's."
    )
    num_kv_heads: int | None = Field(
        None,
        ge=1,
        description="Presets only: key/value heads, dividing num_heads; none: the preset's.",
    )
    intermediate_size: int | None = Field(
        None, ge=1, description="Presets only: MLP width; none: the preset's."
    )
    context_length: int | None = Field(
        None, ge=1, description="Presets only: most positions, in tokens; none: the preset's."
    )
    tie_embeddings: bool | None = Field(
        None,
        description="Presets only: share the input embedding with the output projection; "
        "none: the preset's (true).",
    )
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | None = Field(
        None,
        description="CUDA only: spread the model's layers over the visible GPUs with accelerate "
        "(model parallelism; 'auto' and 'balanced' even out memory, 'balanced_low_0' keeps GPU "
        "0 light, 'sequential' fills GPU 0 first); needs run.device = 'cuda' or 'auto'; none: "
        "the whole model on run.device.",
    )

    def architecture_overrides(self) -> dict[str, int | bool]:
        """The architecture fields that are set (not none), by name."""
        from fedllm.model.presets import ARCHITECTURE_KEYS

        values = {key: getattr(self, key) for key in ARCHITECTURE_KEYS}
        return {key: value for key, value in values.items() if value is not None}

    @property
    def bpe_vocab_size(self) -> int:
        """Tokens of the 'bpe' tokenizer: vocab_size, or 8192 when unset."""
        return 8192 if self.vocab_size is None else self.vocab_size

    @model_validator(mode="after")
    def _check_scratch_fields(self) -> ModelConfig:
        from fedllm.model.presets import is_preset, preset_names, preset_spec

        overrides = self.architecture_overrides()
        scratch_only = [f"model.{key} = {value!r}" for key, value in overrides.items()]
        if self.tokenizer == "bpe":
            scratch_only.append("model.tokenizer = 'bpe'")
        if scratch_only and not is_preset(self.name):
            raise ValueError(
                f"{', '.join(scratch_only)}: only a model trained from scratch takes these, "
                f"but model.name = {self.name!r} is a pretrained model; choose a preset "
                f"({', '.join(preset_names())}) or remove those keys"
            )
        if self.vocab_size is not None and self.tokenizer != "bpe":
            raise ValueError(
                f"model.vocab_size = {self.vocab_size} applies only to model.tokenizer = 'bpe' "
                f"(it is {self.tokenizer!r}); set model.tokenizer = 'bpe' or remove vocab_size"
            )
        if overrides:
            preset_spec(self.name, overrides)  # ValueError naming the keys
        return self


class MethodConfig(Section):
    kind: str = Field(
        "lora",
        description="What is trained and exchanged: 'lora', 'full', 'prompt' (prompt tuning), "
        "'prefix' (prefix tuning), 'ptuning' (P-tuning), 'ia3' or 'adapter' (bottleneck adapters).",
    )
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout probability.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Module names LoRA wraps.",
    )
    num_virtual_tokens: int = Field(
        20, ge=1, description="Virtual tokens of 'prompt', 'prefix' and 'ptuning'."
    )
    prompt_init: Literal["vocab", "random", "text"] = Field(
        "vocab",
        description="Start of 'prompt' and 'prefix': the embeddings ('prompt') or the keys and "
        "values in every layer ('prefix') of random vocabulary tokens ('vocab') or of "
        "prompt_init_text's tokens, repeated or cut ('text'); or N(0, 1) noise ('random'). "
        "'prefix' with prefix_projection always starts as peft initialises it.",
    )
    prompt_init_text: str = Field(
        "", description="Text whose tokens start the prompt or prefix (prompt_init = 'text')."
    )
    prefix_projection: bool = Field(
        False,
        description="'prefix': produce the prefix through a trained two-layer MLP "
        "(encoder_hidden_size wide) instead of learning it directly.",
    )
    encoder_hidden_size: int | None = Field(
        None,
        ge=1,
        description="Hidden width of the 'ptuning' prompt encoder MLP and of the 'prefix' "
        "projection; none: the model's hidden size.",
    )
    adapter_size: int = Field(
        32, ge=1, description="'adapter' bottleneck width (features between down and up)."
    )
    ia3_target_modules: list[str] = Field(
        default_factory=lambda: ["k_proj", "v_proj", "down_proj"],
        description="Linear modules whose activations IA3 rescales.",
    )
    ia3_feedforward_modules: list[str] = Field(
        default_factory=lambda: ["down_proj"],
        description="Which of ia3_target_modules are feedforward (rescaled at their input).",
    )
    rank_min: int | None = Field(
        None,
        ge=1,
        description="Heterogeneous LoRA ranks (HetLoRA): each client's rank is drawn once, "
        "seeded, uniformly from [rank_min, r]; the client trains and uploads only that many "
        "rank components; none: every client trains rank r.",
    )
    ranks_by_client: dict[str, int] = Field(
        default_factory=dict,
        description="LoRA rank (1 to r) of named clients (overrides rank_min for them).",
    )
    rank_aggregation: Literal["pad", "per_rank"] = Field(
        "pad",
        description="How updates of different ranks are combined: 'pad': zero-padded to rank "
        "r and averaged (HetLoRA; components above a client's rank count as no change); "
        "'per_rank': each rank component averaged over the clients that train it.",
    )

    @property
    def heterogeneous_ranks(self) -> bool:
        """True when some client may train a LoRA rank below ``r``."""
        return self.rank_min is not None or bool(self.ranks_by_client)

    @model_validator(mode="after")
    def _check_combinations(self) -> MethodConfig:
        if self.prompt_init == "text" and not self.prompt_init_text.strip():
            raise ValueError(
                "method.prompt_init = 'text' needs a non-empty method.prompt_init_text "
                "(e.g. \"Answer the question helpfully:\"), or choose prompt_init = 'vocab'"
            )
        if not self.ia3_target_modules:
            raise ValueError("method.ia3_target_modules is empty; IA3 needs at least one module")
        stray = [m for m in self.ia3_feedforward_modules if m not in self.ia3_target_modules]
        if stray:
            raise ValueError(
                f"method.ia3_feedforward_modules {stray} are not in method.ia3_target_modules "
                f"{self.ia3_target_modules}; every feedforward module must also be a target"
            )
        self._check_ranks()
        return self

    def _check_ranks(self) -> None:
        if self.rank_min is not None and self.rank_min > self.r:
            raise ValueError(
                f"method.rank_min = {self.rank_min} exceeds method.r = {self.r}; "
                f"client ranks are drawn from [rank_min, r], so rank_min must be 1 to {self.r}"
            )
        bad = {k: v for k, v in self.ranks_by_client.items() if not 1 <= v <= self.r}
        if bad:
            raise ValueError(
                f"method.ranks_by_client = {bad}: ranks must be 1 to method.r = {self.r}"
            )
        if self.heterogeneous_ranks and self.kind != "lora":
            key = "rank_min" if self.rank_min is not None else "ranks_by_client"
            raise ValueError(
                f"method.{key} (heterogeneous LoRA ranks) needs method.kind = 'lora', "
                f"not {self.kind!r}; remove method.{key}"
            )


class DataConfig(Section):
    source: str = Field(
        "chitchat",
        description="'chitchat', 'chatterbot', 'pydoc', or a path to a .jsonl/.txt file.",
    )
    partition: str = Field(
        "natural",
        description="How records are split among clients: 'natural' (one client per value of "
        "partition_by), 'iid', 'dirichlet' (label skew over partition_by), 'shards' (each "
        "client gets exactly labels_per_client values of partition_by), 'quantity' (size "
        "skew, labels iid) or 'topic' (Dirichlet over topics clustered from the text).",
    )
    partition_by: str = Field(
        "user",
        description="Field used by 'natural' (client id), 'dirichlet' and 'shards' (label); "
        "chitchat has 'user', chatterbot 'category', pydoc 'topic'.",
    )
    num_clients: int = Field(
        4, ge=1, description="Clients to create; for 'natural', the largest groups are kept."
    )
    dirichlet_alpha: float = Field(
        0.5,
        gt=0,
        description="Dirichlet concentration of 'dirichlet' and 'topic' (smaller: more skew).",
    )
    labels_per_client: int = Field(
        2, ge=1, description="'shards': distinct values of partition_by each client gets."
    )
    quantity_skew: Literal["powerlaw", "lognormal"] = Field(
        "powerlaw",
        description="'quantity': client sizes by rank, the k-th largest (k = 1, 2...) "
        "proportional to k^-quantity_exponent ('powerlaw'), or drawn log-normal with "
        "quantity_sigma ('lognormal', seeded).",
    )
    quantity_exponent: float = Field(
        1.0, ge=0, description="'quantity' powerlaw exponent (0: equal sizes)."
    )
    quantity_sigma: float = Field(
        1.0, ge=0, description="'quantity' lognormal sigma of log-size (0: equal sizes)."
    )
    num_topics: int = Field(
        8, ge=2, description="'topic': topics found by TF-IDF + k-means over the records' text."
    )
    min_client_examples: int = Field(
        4, ge=1, description="Smallest client (train + eval examples) kept."
    )
    max_examples_per_client: int | None = Field(
        None, ge=1, description="Cap on each client's examples (seeded subsample)."
    )
    seq_len: int = Field(64, ge=8, description="Tokens per example (truncate / pack).")
    format: Literal["auto", "text"] = Field(
        "auto",
        description="'auto': chat records become SFT examples (loss on assistant replies), "
        "text records packed blocks; 'text': every record's text (chat messages joined by "
        "newlines) packed into blocks with loss on every token (continued pre-training).",
    )
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of each client's examples held out for eval."
    )
    test_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of all examples held out as the global test split."
    )
    max_test_examples: int | None = Field(
        64, ge=1, description="Cap on the global test split (evaluation cost)."
    )
    max_eval_examples: int | None = Field(
        32, ge=1, description="Cap on each client's eval split (evaluation cost)."
    )


class PublicConfig(Section):
    """Public data: a corpus the server holds (and anyone may hold), beside the private
    data of ``[data]``. Its modes combine freely."""

    source: str | None = Field(
        None,
        description="Public corpus: 'pydoc', 'chitchat', 'chatterbot', or a .jsonl/.txt path; "
        "tokenized like [data] (text packed into seq_len blocks). Must differ from "
        "data.source (the two must not share text); none: no public data.",
    )
    max_examples: int | None = Field(
        None,
        ge=1,
        description="Most public training examples (packed blocks or chats, from a seeded "
        "shuffle of the corpus); none: all.",
    )
    eval_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of the public corpus's records held out; every evaluation reports "
        "its perplexity as public_ppl.",
    )
    max_eval_examples: int | None = Field(
        64, ge=1, description="Cap on the public held-out examples (evaluation cost)."
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="Steps the server trains the global model on public data before round 1 "
        "(reported as public_warmup on round 1's line; a resumed run does not redo it).",
    )
    server_steps: int = Field(
        0,
        ge=0,
        description="Steps the server trains on public data each round, from the broadcast; "
        "its change joins the clients' as a participant weighted server_weight.",
    )
    server_weight: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share lambda of the server's public update in each round's combined "
        "update: (1 - lambda) x (mean of the clients') + lambda x (the server's); "
        "needs server_steps > 0.",
    )
    mix_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of every client batch drawn from the public corpus (each client "
        "holds a copy): round(mix_ratio x client.batch_size) public examples per batch, "
        "the rest private.",
    )

    def public_per_batch(self, batch_size: int) -> int:
        """Public examples in each client micro-batch of ``batch_size``."""
        return round(self.mix_ratio * batch_size)

    @model_validator(mode="after")
    def _check_modes(self) -> PublicConfig:
        used = [
            f"public.{key} = {getattr(self, key)}"
            for key in ("warmup_steps", "server_steps", "mix_ratio")
            if getattr(self, key) > 0
        ]
        if used and self.source is None:
            raise ValueError(
                f"{', '.join(used)} needs a public corpus, but public.source is none; set "
                "public.source (e.g. 'pydoc', or a .txt/.jsonl path)"
            )
        default_weight = type(self).model_fields["server_weight"].default
        if self.server_steps == 0 and self.server_weight != default_weight:
            raise ValueError(
                f"public.server_weight = {self.server_weight} weighs the server's public "
                "update, but public.server_steps = 0 (the server trains none); set "
                "public.server_steps > 0 or remove public.server_weight"
            )
        return self


class ClientConfig(Section):
    local_steps: int = Field(10, ge=1, description="Optimizer steps per round (if epochs = 0).")
    local_epochs: float = Field(
        0.0, ge=0, description="Passes over local data per round; overrides local_steps if > 0."
    )
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Local optimizer.")
    lr: float = Field(2e-4, gt=0, description="Local learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (AdamW) or L2.")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Schedule over the local steps of one round."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps within a round.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Gradient-norm clip per step; none to disable."
    )
    prox_mu: float = Field(
        0.0, ge=0, description="FedProx proximal weight mu (0: plain local training)."
    )
    keep_optimizer_state: bool = Field(
        False,
        description="Keep each client's local optimizer state (AdamW moments, SGD momentum) "
        "across rounds, as DiLoCo's inner optimizer does; stored per client on disk "
        "(2x the trainable parameters for AdamW). False: a fresh optimizer every round.",
    )
    drift_correction: Literal["none", "scaffold"] = Field(
        "none",
        description="'scaffold': SCAFFOLD control variates (Karimireddy et al. 2020, option II), "
        "kept per client across rounds; doubles the bytes sent each way.",
    )
    local_steps_min: int | None = Field(
        None,
        ge=1,
        description="Heterogeneous compute: each client's steps per round are drawn once, "
        "seeded, uniformly from [local_steps_min, local_steps]; none: all run local_steps.",
    )
    local_steps_by_client: dict[str, int] = Field(
        default_factory=dict,
        description="Steps per round of named clients (overrides local_steps, local_steps_min "
        "and local_epochs for them).",
    )
    bf16: bool = Field(False, description="bfloat16 autocast for forward and backward.")
    fp16: bool = Field(
        False,
        description="CUDA only: float16 autocast for forward and backward, with dynamic loss "
        "scaling (a GradScaler; steps with inf/NaN gradients are skipped); not with bf16.",
    )
    offload: Literal["none", "optimizer"] = Field(
        "none",
        description="CUDA only: 'optimizer' keeps the local optimizer's state and an fp32 "
        "master copy of the trainable weights in CPU memory (gradients go down, weights come "
        "back up every step; ZeRO-Offload style); 'none': all on run.device.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations.")

    @model_validator(mode="after")
    def _check_budgets(self) -> ClientConfig:
        if self.local_steps_min is not None and self.local_steps_min > self.local_steps:
            raise ValueError(
                f"client.local_steps_min = {self.local_steps_min} exceeds client.local_steps = "
                f"{self.local_steps}; the range [local_steps_min, local_steps] is empty"
            )
        if self.local_steps_min is not None and self.local_epochs > 0:
            raise ValueError(
                "client.local_steps_min draws step counts, but client.local_epochs > 0 sets "
                "them by epochs; use one or the other"
            )
        bad = {k: v for k, v in self.local_steps_by_client.items() if v < 1}
        if bad:
            raise ValueError(f"client.local_steps_by_client needs steps >= 1, got {bad}")
        return self

    @model_validator(mode="after")
    def _check_precision(self) -> ClientConfig:
        if self.bf16 and self.fp16:
            raise ValueError(
                "client.bf16 and client.fp16 are both true; autocast takes one dtype: "
                "choose one (bf16 needs no loss scaling)"
            )
        if self.fp16 and self.offload != "none":
            raise ValueError(
                f"client.fp16 = true with client.offload = {self.offload!r}: the loss scaler "
                "unscales gradients on the device, the offloaded optimizer steps in CPU memory; "
                "use client.bf16 = true with offload"
            )
        return self


class ServerConfig(Section):
    rounds: int = Field(3, ge=1, description="Federated rounds.")
    clients_per_round: int = Field(2, ge=1, description="Clients sampled each round (seeded).")
    min_clients: int = Field(
        1, ge=1, description="Fewest accepted updates for a round to change the model."
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
    normalize: Literal["none", "fednova"] = Field(
        "none",
        description="'fednova': clients send their update divided by their local steps "
        "(momentum- and prox-adjusted), the server rescales the mean by the cohort's "
        "effective steps (Wang et al. 2020); for clients running different step counts.",
    )
    weighting: Literal["examples", "uniform"] = Field(
        "examples", description="Aggregation weight of each client."
    )
    sampling: Literal["uniform", "size", "trace"] = Field(
        "uniform",
        description="How each round's clients are drawn (seeded): 'uniform'; 'size': "
        "successively, proportional to training examples; 'trace': uniformly among the "
        "clients online that round (availability_file, else availability).",
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

    @model_validator(mode="after")
    def _check_dropout(self) -> ServerConfig:
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


class PipelineConfig(Section):
    clip_norm: float | None = Field(
        None, gt=0, description="Clip each client update to this global L2 norm; none: off."
    )


class PersonalConfig(Section):
    keys: list[str] = Field(
        default_factory=list,
        description="Glob patterns over trainable parameter names that stay on each client "
        "(e.g. ['*lora_B*']); federated mode only.",
    )
    prompt_tokens: int = Field(
        0, ge=0, description="Trailing virtual tokens of a soft prompt that stay on each client."
    )


class FederationConfig(Section):
    mode: Literal["federated", "local", "centralized"] = Field(
        "federated",
        description="'federated'; 'local': every client trains alone on its own data; "
        "'centralized': all training data pooled. Same step budget in all three.",
    )
    algorithms: list[str] = Field(
        default_factory=list,
        description="Registered opt-in algorithms to turn on by name (ones with no config "
        "section of their own, e.g. a plug-in a user registers); built-in ones are turned on "
        "by their own settings.",
    )


class EvalConfig(Section):
    every: int = Field(1, ge=1, description="Evaluate every N rounds (and at round 0).")
    batch_size: int = Field(8, ge=1, description="Evaluation batch size.")


class RunConfig(Section):
    checkpoint_every: int = Field(1, ge=1, description="Checkpoint every N rounds.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's).")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu",
        description="Where clients train and the model is evaluated: 'cpu', 'cuda' (an error "
        "without a GPU) or 'auto' (cuda when torch sees a GPU, else cpu). The exchanged "
        "state, the server and checkpoints stay in CPU memory.",
    )
    peak_tflops: float | None = Field(
        None,
        gt=0,
        description="Peak dense TFLOP/s of the training device(s), the denominator of the MFU "
        "estimate; none: looked up for known CUDA GPUs (bf16 dense), else MFU is not reported.",
    )


class HardPromptConfig(Section):
    candidates_file: str | None = Field(
        None,
        description="Text file of candidate instructions, one per line (blank lines and "
        "lines starting with '#' skipped); none: use templates.",
    )
    templates: list[str] = Field(
        default_factory=list,
        description="Candidate instructions used when candidates_file is none; empty: the "
        "built-in set (each task phrase with each constraint sentence).",
    )
    placement: Literal["system", "prefix"] = Field(
        "system",
        description="Where the instruction goes: 'system' (the system message) or 'prefix' "
        "(before the first user message).",
    )
    aggregate: Literal["mean", "rank"] = Field(
        "mean",
        description="'mean': loss over every client's answer tokens pooled (nats/token); "
        "'rank': mean of the candidate's rank on each client (Borda).",
    )
    keep: int = Field(
        3, ge=1, description="Best candidates kept: reported, and the parents of mutations."
    )
    mutation_rounds: int = Field(
        2,
        ge=0,
        description="Rounds of mutating the kept candidates and scoring the new ones; "
        "0: only score.",
    )
    mutations_per_round: int = Field(4, ge=1, description="New candidates per mutation round.")
    max_eval_examples: int | None = Field(
        8, ge=1, description="Held-out examples each client scores on; none: its whole eval split."
    )


class Config(Section):
    seed: int = Field(0, description="Fixes sampling, data order, initialisation and dropout.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    public: PublicConfig = Field(default_factory=PublicConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    personal: PersonalConfig = Field(default_factory=PersonalConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    hard_prompt: HardPromptConfig = Field(default_factory=HardPromptConfig)

    @model_validator(mode="after")
    def _check_consistency(self) -> Config:
        if self.server.min_clients > self.server.clients_per_round:
            raise ValueError(
                f"server.min_clients = {self.server.min_clients} exceeds "
                f"server.clients_per_round = {self.server.clients_per_round}; "
                "no round could ever be accepted"
            )
        return self

    @model_validator(mode="after")
    def _check_device(self) -> Config:
        if self.run.device != "cpu":
            return self  # whether a GPU is there is checked when the run starts
        cuda_only = [
            ("client.fp16 = true", self.client.fp16, "use client.bf16 = true on the CPU"),
            (
                f"client.offload = {self.client.offload!r}",
                self.client.offload != "none",
                "set client.offload = 'none' on the CPU",
            ),
            (
                f"model.device_map = {self.model.device_map!r}",
                self.model.device_map is not None,
                "remove model.device_map on the CPU",
            ),
        ]
        for setting, present, fix in cuda_only:
            if present:
                raise ValueError(
                    f"{setting} needs a CUDA GPU, but run.device = 'cpu'; set run.device = "
                    f"'cuda' (or 'auto'), or {fix}"
                )
        return self

    @model_validator(mode="after")
    def _check_public(self) -> Config:
        public = self.public
        if public.source is not None and _same_source(public.source, self.data.source):
            raise ValueError(
                f"public.source = {public.source!r} is also data.source: the public and "
                "private data would share text; choose another public corpus, or split the "
                "corpus into two files"
            )
        if public.mix_ratio > 0:
            batch = self.client.batch_size
            n_public = public.public_per_batch(batch)
            if not 0 < n_public < batch:
                raise ValueError(
                    f"public.mix_ratio = {public.mix_ratio} x client.batch_size = {batch} "
                    f"rounds to {n_public} public example(s) per batch; it must leave 1 to "
                    f"{batch - 1}: choose mix_ratio between {1 / batch:.3g} and "
                    f"{(batch - 1) / batch:.3g}, or another batch_size"
                )
        return self


def check_client_names(key: str, named: Iterable[str], clients: Iterable[str]) -> None:
    """Refuse a per-client setting (``key``) that names clients the federation lacks.

    Raises:
        ConfigError: naming the unknown ids and listing (up to 10) valid ones.
    """
    known = sorted(clients)
    unknown = sorted(set(named) - set(known))
    if unknown:
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        raise ConfigError(
            f"config error: {key} names unknown client(s) {unknown}; "
            f"the federation's clients are: {shown}"
        )


def parse_config(raw: dict[str, Any]) -> Config:
    """Validate a raw dict into a :class:`Config`, with readable errors."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, raw)) from None
    _check_components(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a TOML config, apply ``section.key=value`` overrides and validate.

    Raises:
        ConfigError: on a missing file, bad TOML, unknown keys or bad values.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: no config file at {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config error: {path} is not valid TOML: {err}") from None
    for item in overrides or []:
        apply_override(raw, item)
    return parse_config(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` override in place; the value is read as TOML."""
    if "=" not in item:
        raise ConfigError(f"config error: override {item!r} is not of the form section.key=value")
    dotted, text = item.split("=", 1)
    keys = [k.strip() for k in dotted.split(".")]
    if not all(keys):
        raise ConfigError(f"config error: override {item!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string: --set data.source=chatterbot
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config error: {dotted} - {key} is a value, not a section")
        node = child
    node[keys[-1]] = value


def dump_config(config: Config) -> str:
    """The resolved config as TOML text (unset optional values written as "none")."""
    return tomli_w.dumps(_none_to_word(config.model_dump()))


def _none_to_word(tree: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _none_to_word(v) if isinstance(v, dict) else (NONE if v is None else v)
        for k, v in tree.items()
    }


def _check_components(config: Config) -> None:
    """The algorithms the config turns on must work together (first: a combination is
    the more useful message), and every component name must be in its registry."""
    from fedllm import components

    unknown = [name for name in config.federation.algorithms if name not in components.ALGORITHMS]
    if unknown:
        raise ConfigError(
            f"config error: federation.algorithms names {unknown}, which are not registered; "
            f"choose from {', '.join(components.ALGORITHMS.names())}"
        )
    problems = components.composition_problems(config)
    if problems:
        raise ConfigError("\n".join(f"config error: {p}" for p in problems))
    problems = []
    named = components.named_fields()
    if config.public.source is not None:
        named.append(("public.source", components.DATA_SOURCES))
    for dotted, registry in named:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if registry is components.DATA_SOURCES and Path(str(value)).suffix in {".jsonl", ".txt"}:
            continue
        if value not in registry:
            problems.append(f"config error: {dotted} = {registry.unknown_message(value)}")
    if problems:
        raise ConfigError("\n".join(problems))


def _same_source(a: str, b: str) -> bool:
    """True when two data sources name the same corpus (a name, or the same file)."""
    if a == b:
        return True
    files = [Path(s) for s in (a, b) if Path(s).suffix in {".jsonl", ".txt"}]
    return len(files) == 2 and files[0].resolve() == files[1].resolve()


def _describe(err: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for item in err.errors():
        loc = [str(p) for p in item["loc"]]
        dotted = ".".join(loc) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"config error: {dotted} is not a known key; " + _valid_keys(loc))
        elif item["type"] == "value_error":
            lines.append(f"config error: {item['msg'].removeprefix('Value error, ')}")
        else:
            given = item.get("input")
            lines.append(f"config error: {dotted} = {given!r}: {item['msg']}")
    return "\n".join(lines)


def _valid_keys(loc: list[str]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    valid = list(model.model_fields)
    hint = difflib.get_close_matches(loc[-1], valid, n=1)
    tail = f" (did you mean {hint[0]!r}?)" if hint else ""
    where = f"[{'.'.join(loc[:-1])}]" if loc[:-1] else "the top level"
    return f"valid keys in {where}: {', '.join(valid)}{tail}"
