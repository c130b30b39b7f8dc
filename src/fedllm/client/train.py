"""Local training on one client: the update a client computes in a round."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from fedllm.client.hooks import TrainHook
from fedllm.client.offload import offloaded_optimizer
from fedllm.client.settings import ClientConfig
from fedllm.data import IGNORE_INDEX, ClientData, Example, collate
from fedllm.model.device import autocast, input_device, use_bf16
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
    examples: Sequence[Example], batch_size: int, seed: int, hooks: Sequence[TrainHook] = ()
) -> Iterator[list[Example]]:
    """Endless seeded micro-batches of ``examples`` (:func:`batch_indices`), unless a
    hook draws them itself (public examples mixed in, :class:`TrainHook.batches`)."""
    for hook in hooks:
        drawn = hook.batches(examples, batch_size, seed)
        if drawn is not None:
            return drawn
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
    hooks: Sequence[TrainHook] = (),
    start: Params | None = None,
) -> dict[str, float]:
    """Run ``steps`` optimizer steps on ``examples``, in place on ``model``'s trainable params.

    Data order and dropout are fixed by ``seed``; the global RNG is left as it was.
    ``hooks`` act at fixed points of every step (:class:`TrainHook`, in order):
    they may draw the batches, change the loss, add to the unscaled gradients
    before clipping (FedProx), move the parameters after each optimizer step
    (SCAFFOLD), load or keep the optimizer's state, and place the round's steps in
    a longer learning-rate schedule (:func:`schedule_position`). ``start`` is the state
    training starts from, handed to :meth:`TrainHook.begin`.

    Returns:
        metrics: ``train_loss`` (mean over steps), ``steps``, ``tokens`` (input tokens
        processed, padding excluded), ``label_tokens`` (tokens the loss scored),
        ``lr_sum`` (sum of the steps' learning rates), ``train_s`` (seconds).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trainable = [p for _, p in named]
    for hook in hooks:
        hook.begin([n for n, _ in named], trainable, start or {})
    optimizer = build_optimizer(trainable, cfg)
    for hook in hooks:
        hook.start_optimizer(optimizer)
    offset, total = schedule_position(hooks, steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(offset + s, total, cfg)
    )
    batches = draw_batches(examples, cfg.batch_size, seed, hooks)
    device = input_device(model)
    bf16 = use_bf16(cfg.bf16, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.fp16)  # a no-op unless fp16
    losses: list[float] = []
    tokens = label_tokens = 0
    lr_sum = 0.0

    def loss_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device, bf16, cfg.fp16):
            loss: torch.Tensor = model(**batch).loss
        for hook in hooks:
            loss = hook.on_loss(loss)
        return loss

    begun = time.perf_counter()
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
                tokens += int(batch["attention_mask"].sum())
                label_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                hooked = hooked_gradients(hooks, batch, loss_of)
                if hooked is None:
                    loss = loss_of(batch)
                    torch.autograd.backward(scaler.scale(loss / cfg.grad_accum))
                    hooked = float(loss.detach())
                step_loss += hooked / cfg.grad_accum
            scaler.unscale_(optimizer)  # true gradients for the hooks and the clip
            for hook in hooks:
                hook.on_gradients(trainable)
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            scaler.step(optimizer)  # skipped when fp16 gradients overflowed
            scaler.update()
            step_lr = float(optimizer.param_groups[0]["lr"])
            lr_sum += step_lr
            for hook in hooks:
                hook.after_step(trainable, step_lr)
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
    for hook in hooks:
        hook.end(optimizer)
    return {
        "train_loss": sum(losses) / len(losses),
        "steps": float(steps),
        "tokens": float(tokens),
        "label_tokens": float(label_tokens),
        "lr_sum": lr_sum,
        "train_s": time.perf_counter() - begun,
    }


def schedule_position(hooks: Sequence[TrainHook], steps: int) -> tuple[int, int]:
    """``(offset, total)`` of this round's ``steps`` steps in the learning-rate schedule:
    the one hook that places them (:meth:`TrainHook.schedule`), else ``(0, steps)``,
    warm-up and decay within the round."""
    placed = [p for p in (hook.schedule(steps) for hook in hooks) if p is not None]
    if len(placed) > 1:
        raise ValueError(f"{len(placed)} training hooks place the learning-rate schedule; one may")
    return placed[0] if placed else (0, steps)


def hooked_gradients(
    hooks: Sequence[TrainHook],
    batch: dict[str, torch.Tensor],
    loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
) -> float | None:
    """The loss of the first hook that computes the batch's gradients itself, or None."""
    for hook in hooks:
        loss = hook.compute_gradients(batch, loss_of)
        if loss is not None:
            return loss
    return None


def compute_update(
    model: torch.nn.Module,
    broadcast: Params,
    data: ClientData,
    cfg: ClientConfig,
    seed: int,
    pad_id: int,
    steps: int | None = None,
    hooks: Sequence[TrainHook] = (),
) -> ClientUpdate:
    """Load ``broadcast``, train locally, and return the delta against it.

    Args:
        steps: optimizer steps; None: :func:`count_local_steps` of the config.
        hooks: act inside the training loop (see :func:`train_locally`).

    The aggregation weight ``num_examples`` is the client's training-set size.
    """
    set_trainable_state(model, broadcast)
    if steps is None:
        steps = count_local_steps(cfg, len(data.train))
    metrics = train_locally(model, data.train, cfg, steps, seed, pad_id, hooks, broadcast)
    trained = get_trainable_state(model)
    with torch.no_grad():
        delta = {name: trained[name].sub_(broadcast[name]) for name in broadcast}
    return ClientUpdate(data.client_id, delta, len(data.train), metrics)
