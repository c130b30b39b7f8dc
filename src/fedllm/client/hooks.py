"""Hooks into the local training loop, so algorithms change it without the loop naming them.

A client plug-in that needs to act inside local training (FedProx on the
gradients, SCAFFOLD after each optimizer step, public examples in the
batches, a kept optimizer state, a learning-rate schedule over the whole run)
hands the trainer a :class:`TrainHook`.
Every method has a do-nothing default, so a hook overrides only what it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from fedllm.data import Example
from fedllm.types import Params


class TrainHook:
    """Called by :func:`fedllm.client.train.train_locally` at fixed points of each step."""

    def begin(
        self, names: Sequence[str], params: Sequence[torch.nn.Parameter], start: Params
    ) -> None:
        """Training starts from ``start``; ``params`` are the trainable parameters, named."""

    def batches(
        self, examples: Sequence[Example], batch_size: int, seed: int
    ) -> Iterator[list[Example]] | None:
        """Endless micro-batches to train on, or None to leave the data as it is."""
        return None

    def start_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer was built (before the first step)."""

    def schedule(self, steps: int) -> tuple[int, int] | None:
        """Where this round's ``steps`` optimizer steps sit in a longer learning-rate
        schedule: ``(offset, total)``, the index of the round's first step in it and its
        length (both in steps). None: the schedule spans this round alone."""
        return None

    def compute_gradients(
        self,
        batch: dict[str, torch.Tensor],
        loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    ) -> float | None:
        """Compute the micro-batch's gradients itself (per-example clipping) with
        ``loss_of`` (the trainer's forward pass), returning the batch's loss; None
        leaves the backward pass to the trainer."""
        return None

    def on_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The micro-batch loss before backward; return the loss to differentiate."""
        return loss

    def on_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Gradients are complete and unscaled, before clipping and the optimizer step."""

    def after_step(self, params: Sequence[torch.nn.Parameter], lr: float) -> None:
        """The optimizer stepped with learning rate ``lr``."""

    def end(self, optimizer: torch.optim.Optimizer) -> None:
        """The last step is done."""
