"""Config sections of the model: ``[model]`` (base model, presets) and ``[method]``
(full fine-tuning or a PEFT method)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedllm.settings import Section


class ModelConfig(Section):
    name: str = Field(
        "smollm2-135m",
        description="Base model: 'smollm2-135m' (shipped GGUF), a randomly initialised preset "
        "(tiny: 'tiny', 'tiny-4l'; to pre-train: 'llama-5m', 'llama-20m', 'llama-60m'), "
        "a local directory or a hub id.",
    )
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description="Dtype the base weights are held in. 'auto': bfloat16 where the device "
        "multiplies bf16 natively and the method freezes the base (every method but "
        "'full', whose weights are the trained master weights), else float32. A frozen "
        "bf16 base halves the model's memory; the trained parameters stay fp32.",
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
    rank_aggregation: Literal["hetlora", "padded_deltas", "per_rank"] = Field(
        "hetlora",
        description="How LoRA updates of different ranks are combined: 'hetlora' (HetLoRA's "
        "sparsity-weighted aggregation): each client's module, zero above its rank, averaged "
        "layer by layer with weights proportional to the Frobenius norm of B_k A_k "
        "(server.weighting applies only to non-LoRA tensors); 'padded_deltas': the clients' "
        "deltas zero-padded to rank r and averaged by server.weighting (components above a "
        "client's rank count as no change); 'per_rank': each rank component's delta averaged "
        "over the clients that train it.",
    )

    @field_validator("rank_aggregation", mode="before")
    @classmethod
    def _renamed_pad(cls, value: object) -> object:
        if value == "pad":
            raise ValueError(
                "method.rank_aggregation = 'pad' was renamed, as it was not HetLoRA's rule; "
                "choose 'padded_deltas' (the old rule: the clients' deltas zero-padded to "
                "rank r and averaged by server.weighting, so components above a client's "
                "rank count as no change) or 'hetlora' (HetLoRA's sparsity-weighted "
                "aggregation: the clients' modules, zero above their rank, averaged with "
                "weights proportional to the Frobenius norm of B_k A_k, per layer)"
            )
        return value

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
