"""FreeLB's client half: a training hook that computes each micro-batch's gradients
from ``K`` ascent steps on a perturbation of the input embeddings."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.security.freelb import FreeLBSettings
from fedllm.security.freelb.perturb import ascend, start_delta

LossOf = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""The trainer's forward pass: a collated batch -> its loss (autocast and loss hooks in)."""


def same_randomness(device: torch.device) -> Callable[[], None]:
    """A function that puts the global RNG (and ``device``'s, on a GPU) back where it is
    now: every ascent step then draws the same dropout masks (FreeLB, section 3.3)."""
    cpu = torch.get_rng_state()
    gpu = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def rewind() -> None:
        torch.set_rng_state(cpu)
        if gpu is not None:
            torch.cuda.set_rng_state(gpu, device)

    return rewind


class FreeLBHook(TrainHook):
    """Gradients of ``(1/K) sum_t L(X + delta_t)``, ``delta_t`` ascending the loss.

    For each micro-batch: ``delta_0`` from :func:`start_delta`; for ``t = 0..K-1`` a
    forward pass on ``embed(input_ids) + delta_t`` whose loss, divided by ``K`` (and by
    ``client.grad_accum``), is back-propagated into the parameters' gradients, which
    accumulate over the ``K`` passes; between passes ``delta`` takes the ascent step and
    projection of :func:`ascend`. The same dropout masks are drawn in every pass.

    Args:
        embeddings: the model's input embedding layer.
        steps: K >= 1.
        step_size: alpha, the ascent step's L2 length per example.
        epsilon: the bound on each example's ``||delta||`` (0: none).
        init: sigma, the start's magnitude (0: start at zero).
        grad_accum: micro-batches per optimizer step.
    """

    def __init__(
        self,
        embeddings: torch.nn.Module,
        steps: int,
        step_size: float,
        epsilon: float,
        init: float,
        grad_accum: int = 1,
    ) -> None:
        if steps < 1:
            raise ValueError(f"FreeLB needs at least one ascent step, got {steps}")
        self.embeddings, self.steps = embeddings, steps
        self.step_size, self.epsilon, self.init = step_size, epsilon, init
        self.grad_accum = grad_accum
        self.deltas: list[torch.Tensor] = []  # the last micro-batch's delta_0..delta_{K-1}

    def compute_gradients(self, batch: dict[str, torch.Tensor], loss_of: LossOf) -> float:
        """Accumulates the parameters' gradients over the K passes; the passes' mean loss."""
        weight = next(self.embeddings.parameters())
        ids = batch["input_ids"].to(weight.device)
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        shape = torch.Size((*ids.shape, weight.shape[-1]))
        mask = batch["attention_mask"].to(weight.device)
        delta = start_delta(shape, mask, self.init, weight.dtype)
        rewind = same_randomness(weight.device)
        self.deltas, total = [], 0.0
        for t in range(self.steps):
            if t:
                rewind()
            delta.requires_grad_(True)
            self.deltas.append(delta.detach())
            loss = loss_of({**rest, "inputs_embeds": self.embeddings(ids) + delta})
            torch.autograd.backward(loss / (self.steps * self.grad_accum))
            total += float(loss.detach())
            if t + 1 < self.steps:
                assert delta.grad is not None
                delta = ascend(delta.detach(), delta.grad, self.step_size, self.epsilon)
        return total / self.steps


class FreeLBPlugin(ClientPlugin):
    """Every client trains with FreeLB's adversarial gradients.

    Args:
        embeddings: the model's input embedding layer.
        settings: the ``[algorithm.freelb]`` section.
        grad_accum: ``client.grad_accum``.
    """

    name = "freelb"

    def __init__(
        self, embeddings: torch.nn.Module, settings: FreeLBSettings, grad_accum: int
    ) -> None:
        self.embeddings, self.settings, self.grad_accum = embeddings, settings, grad_accum

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        s = self.settings
        return FreeLBHook(self.embeddings, s.steps, s.step_size, s.epsilon, s.init, self.grad_accum)
