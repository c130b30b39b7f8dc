"""Record-level DP-SGD inside a client (Abadi et al. 2016), as a hook of the local trainer.

Every optimizer step trains on a lot of ``L`` examples drawn uniformly without
replacement from the client's data (what the accountant models). Each example's
gradient is computed on its own, clipped to L2 norm ``C`` over all trainable
tensors, and summed; Gaussian noise of std ``z x C`` is added to the sum, which is
divided by ``L``, and the optimizer steps on that. Under ``privacy.dp = 'local'`` the
data build makes every example exactly one record (never packed), so the guarantee
is per record.

Per-example gradients come from one backward pass per example, each trimmed to the
example's own length: no padding, and it works for every method (LoRA, prompt and
prefix tuning, IA3, adapters, full fine-tuning). ``torch.func.vmap`` is not used:
transformers' attention masks branch on data, and on CPU its attention falls back to
a per-example loop anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from fedllm.client.hooks import TrainHook
from fedllm.data import Example
from fedllm.seeding import privacy_seed

LossOf = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""The trainer's forward pass: a collated batch -> its loss (autocast and loss hooks in)."""


class DPSGDHook(TrainHook):
    """Clip each example's gradient, add noise to the lot's sum, divide by the lot.

    Args:
        clip_norm: C, the L2 bound of each example's gradient (> 0).
        noise_multiplier: z >= 0; the noise std on the summed gradients is z x C.
        lot: examples per optimizer step (L; at most the client's examples).
        micro_batches: micro-batches per step (``client.grad_accum``); the lot is split
            among them.
        seed: fixes the lots and the noise (derived per client and round).
        secure: draw the lots and the noise from generators seeded by the OS CSPRNG
            (``run.randomness = 'secure'``), not from ``seed``, which the server knows.
    """

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        lot: int,
        micro_batches: int,
        seed: int,
        secure: bool = False,
    ) -> None:
        if not clip_norm > 0 or not noise_multiplier >= 0 or lot < 1 or micro_batches < 1:
            raise ValueError(
                f"DP-SGD needs clip_norm > 0, noise_multiplier >= 0, lot >= 1 and "
                f"micro_batches >= 1; got {clip_norm}, {noise_multiplier}, {lot}, {micro_batches}"
            )
        self.clip_norm, self.noise_multiplier = clip_norm, noise_multiplier
        self.lot, self.micro_batches = lot, micro_batches
        self.secure = secure
        noise_seed = privacy_seed(seed, "dp-sgd-noise", secure=secure)
        self.noise = torch.Generator().manual_seed(noise_seed)
        self.clipped = self.examples = 0
        self._sums: list[torch.Tensor] = []
        self._params: Sequence[torch.nn.Parameter] = ()

    def begin(
        self,
        names: Sequence[str],
        params: Sequence[torch.nn.Parameter],
        start: dict[str, torch.Tensor],
    ) -> None:
        self._params = params
        self._sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]

    def batches(
        self, examples: Sequence[Example], batch_size: int, seed: int
    ) -> Iterator[list[Example]]:
        return self._lots(examples, seed)

    def _lots(self, examples: Sequence[Example], seed: int) -> Iterator[list[Example]]:
        rng = np.random.default_rng(privacy_seed(seed, "dp-sgd-lots", secure=self.secure))
        lot = min(self.lot, len(examples))
        while True:
            chosen = rng.choice(len(examples), size=lot, replace=False).tolist()
            for part in np.array_split(np.asarray(chosen), self.micro_batches):
                yield [examples[i] for i in part.tolist()]

    def compute_gradients(self, batch: dict[str, torch.Tensor], loss_of: LossOf) -> float:
        """Each row's clipped gradient added to the lot's sum; the rows' mean loss."""
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        total = 0.0
        for row, length in enumerate(lengths):
            example = {k: v[row : row + 1, : int(length)] for k, v in batch.items()}
            loss = loss_of(example)
            torch.autograd.backward(loss)
            total += float(loss.detach())
            self._fold_example()
        return total / max(1, len(lengths))

    def _fold_example(self) -> None:
        grads = [p.grad for p in self._params]
        squares = sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None)
        norm = math.sqrt(squares)
        scale = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
        self.clipped += int(scale < 1.0)
        self.examples += 1
        for total, param in zip(self._sums, self._params, strict=True):
            if param.grad is not None:
                total.add_(param.grad.float(), alpha=scale)
                param.grad = None

    def on_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        std = self.noise_multiplier * self.clip_norm
        for total, param in zip(self._sums, params, strict=True):
            if std > 0:
                noise = torch.randn(total.shape, generator=self.noise, dtype=torch.float32)
                total.add_(noise.to(total.device), alpha=std)
            param.grad = (total / self.lot).to(param.dtype)
            total.zero_()

    def report(self) -> dict[str, float]:
        """The share of examples whose gradient was scaled down, over the round."""
        return {"clipped_fraction": self.clipped / max(1, self.examples)}
