"""Config section of the client side: ``[client]`` (local training)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedllm.settings import Section


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
        "constant",
        description="Decay after the warm-up, over the local steps of one round "
        "(or of the run: lr_schedule_span).",
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="Linear warm-up steps at the start of each round (or of the run: "
        "lr_schedule_span).",
    )
    lr_schedule_span: Literal["round", "run"] = Field(
        "round",
        description="'run': the warm-up and decay span all of the client's local steps over "
        "server.rounds rounds (its steps per round x server.rounds), each round continuing "
        "where its previous one stopped, as DiLoCo's inner optimizer; 'round': they restart "
        "every round.",
    )
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
    bf16: bool | Literal["auto"] = Field(
        False,
        description="bfloat16 autocast for forward and backward (weights, gradients, optimizer "
        "state and the exchanged state stay fp32): true, false, or 'auto': on where the "
        "device multiplies bf16 natively (a CPU with AVX-512 BF16 or AMX, a CUDA GPU with "
        "bf16), else off; the start banner says which.",
    )
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
        if self.bf16 is not False and self.fp16:
            raise ValueError(
                f"client.bf16 = {self.bf16!r} with client.fp16 = true; autocast takes one "
                "dtype: choose one (bf16 needs no loss scaling)"
            )
        if self.fp16 and self.offload != "none":
            raise ValueError(
                f"client.fp16 = true with client.offload = {self.offload!r}: the loss scaler "
                "unscales gradients on the device, the offloaded optimizer steps in CPU memory; "
                "use client.bf16 = true with offload"
            )
        return self
