"""Local training on one client: the update a client computes in a round."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence

import torch

from fedllm.client.inner import export_state, import_state
from fedllm.client.mix import PublicMix
from fedllm.client.offload import offloaded_optimizer
from fedllm.config import ClientConfig
from fedllm.data import IGNORE_INDEX, ClientData, Example, collate
from fedllm.model.device import autocast, input_device
from fedllm.model.state import get_trainable_state, set_trainable_state
from fedllm.types import ClientUpdate, Params


def count_local_steps(cfg: ClientConfig, num_train: int) -> int:
    """Optimizer steps per round: ``local_steps``, or ``local_epochs`` passes if set."""
    if cfg.local_epochs > 0:
        batches_per_epoch = math.ceil(num_train / cfg.batch_size)
        return max(1, math.ceil(cfg.local_epochs * batches_per_epoch / cfg.grad_accum))
    return cfg.local_steps


def batch_indices(
    num_examples: int, batch_size: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """Endless seeded batches: each epoch a fresh permutation, the last batch may be short."""
    if num_examples == 0:
        raise ValueError("cannot draw batches from a client with no training examples")
    while True:
        order = torch.randperm(num_examples, generator=generator).tolist()
        for start in range(0, num_examples, batch_size):
            yield order[start : start + batch_size]


def draw_batches(
    examples: Sequence[Example], batch_size: int, seed: int, public: PublicMix | None = None
) -> Iterator[list[Example]]:
    """Endless seeded micro-batches of ``examples`` (:func:`batch_indices`), or, with
    ``public``, of private and public examples mixed (:meth:`PublicMix.batches`)."""
    if public is not None:
        return public.batches(examples, batch_size, seed)
    rows = batch_indices(len(examples), batch_size, torch.Generator().manual_seed(seed))
    return ([examples[i] for i in batch] for batch in rows)


def build_optimizer(
    params: Sequence[torch.nn.Parameter], cfg: ClientConfig
) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters; with ``client.offload = "optimizer"``
    its state lives in CPU memory (:func:`fedllm.client.offload.offloaded_optimizer`)."""
    if cfg.offload == "optimizer":
        return offloaded_optimizer(params, lambda master: _plain_optimizer(master, cfg))
    return _plain_optimizer(params, cfg)


def _plain_optimizer(
    params: Sequence[torch.nn.Parameter], cfg: ClientConfig
) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, cfg: ClientConfig) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.lr_schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_locally(
    model: torch.nn.Module,
    examples: Sequence[Example],
    cfg: ClientConfig,
    steps: int,
    seed: int,
    pad_id: int,
    anchor: Sequence[torch.Tensor] | None = None,
    correction: Sequence[torch.Tensor | None] | None = None,
    public: PublicMix | None = None,
    optimizer_state: Params | None = None,
) -> dict[str, float]:
    """Run ``steps`` optimizer steps on ``examples``, in place on ``model``'s trainable params.

    Data order and dropout are fixed by ``seed``; the global RNG is left as it was.
    With ``cfg.prox_mu > 0`` (FedProx, Li et al. 2020) the objective gains
    ``mu/2 ||w - anchor||^2``: its gradient ``mu (w - anchor)`` is added to each
    step's gradient (``anchor`` aligned with the trainable parameters).

    ``correction`` (SCAFFOLD's ``c - c_i``, aligned with the trainable
    parameters; None entries are left alone) moves each parameter by
    ``-lr_t * correction`` after every optimizer step, ``lr_t`` being that
    step's learning rate. For plain SGD this is exactly SCAFFOLD's corrected
    step ``y -= lr (g + c - c_i)``; for AdamW and momentum it keeps the
    correction out of the adaptive and momentum statistics (as OpenFedLLM does).

    With ``public``, every micro-batch also holds ``public.per_batch`` public
    examples (:meth:`PublicMix.batches`); ``tokens`` counts them too.

    ``optimizer_state`` (in and out): the optimizer starts from it (if not
    empty) and it is replaced by the state after the last step
    (:mod:`fedllm.client.inner`).

    Returns:
        metrics: ``train_loss`` (mean over steps), ``steps``, ``tokens`` (label
        tokens seen), ``lr_sum`` (sum of the steps' learning rates), ``train_s``
        (seconds).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg)
    if optimizer_state is not None:
        import_state(optimizer, optimizer_state)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg))
    batches = draw_batches(examples, cfg.batch_size, seed, public)
    device = input_device(model)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.fp16)  # a no-op unless fp16
    losses: list[float] = []
    tokens = 0
    lr_sum = 0.0
    start = time.perf_counter()
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                batch = collate(next(batches), pad_id)
                # Label 0 has no input before it. Prompt-learning methods would score
                # it from their last virtual token; mask it so that every method (and
                # evaluate()) scores the same tokens.
                batch["labels"][:, 0] = IGNORE_INDEX
                tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(device, cfg.bf16, cfg.fp16):
                    loss = model(**batch).loss
                scaler.scale(loss / cfg.grad_accum).backward()
                step_loss += float(loss.detach()) / cfg.grad_accum
            scaler.unscale_(optimizer)  # true gradients for the prox term and the clip
            if cfg.prox_mu > 0 and anchor is not None:
                add_proximal_gradient(trainable, anchor, cfg.prox_mu)
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            scaler.step(optimizer)  # skipped when fp16 gradients overflowed
            scaler.update()
            step_lr = float(optimizer.param_groups[0]["lr"])
            lr_sum += step_lr
            if correction is not None:
                apply_correction(trainable, correction, step_lr)
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
    if optimizer_state is not None:
        optimizer_state.clear()
        optimizer_state.update(export_state(optimizer))
    return {
        "train_loss": sum(losses) / len(losses),
        "steps": float(steps),
        "tokens": float(tokens),
        "lr_sum": lr_sum,
        "train_s": time.perf_counter() - start,
    }


def apply_correction(
    params: Sequence[torch.nn.Parameter], correction: Sequence[torch.Tensor | None], lr: float
) -> None:
    """``w -= lr * correction`` for each parameter with a correction."""
    with torch.no_grad():
        for param, term in zip(params, correction, strict=True):
            if term is not None:
                param.sub_(term.to(param.device, param.dtype), alpha=lr)


def add_proximal_gradient(
    params: Sequence[torch.nn.Parameter], anchor: Sequence[torch.Tensor], mu: float
) -> None:
    """``grad += mu (w - anchor)``: the gradient of FedProx's ``mu/2 ||w - anchor||^2``."""
    with torch.no_grad():
        for param, start in zip(params, anchor, strict=True):
            term = (param - start.to(param.device, param.dtype)) * mu
            if param.grad is None:
                param.grad = term
            else:
                param.grad.add_(term)


def compute_update(
    model: torch.nn.Module,
    broadcast: Params,
    data: ClientData,
    cfg: ClientConfig,
    seed: int,
    pad_id: int,
    steps: int | None = None,
    correction: Params | None = None,
    public: PublicMix | None = None,
    optimizer_state: Params | None = None,
) -> ClientUpdate:
    """Load ``broadcast``, train locally, and return the delta against it.

    Args:
        steps: optimizer steps; None: :func:`count_local_steps` of the config.
        correction: SCAFFOLD's ``c - c_i`` by parameter name (see
            :func:`train_locally`); parameters it lacks are not corrected.
        public: public examples mixed into every batch (see :func:`train_locally`).

    The aggregation weight ``num_examples`` is the client's training-set size.
    """
    set_trainable_state(model, broadcast)
    if steps is None:
        steps = count_local_steps(cfg, len(data.train))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    anchor = [broadcast[n] for n in names]
    aligned = None if correction is None else [correction.get(n) for n in names]
    metrics = train_locally(
        model, data.train, cfg, steps, seed, pad_id, anchor, aligned, public, optimizer_state
    )
    trained = get_trainable_state(model)
    with torch.no_grad():
        delta = {name: trained[name].sub_(broadcast[name]) for name in broadcast}
    return ClientUpdate(data.client_id, delta, len(data.train), metrics)
