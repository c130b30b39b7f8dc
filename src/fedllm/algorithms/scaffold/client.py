"""SCAFFOLD, client half: corrected local steps, ``c_i`` kept, its change uploaded."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedllm.algorithms.scaffold.variates import ControlVariates
from fedllm.client.hooks import TrainHook
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.client.store import ClientStateStore
from fedllm.types import ClientUpdate, Params


def apply_correction(
    params: Sequence[torch.nn.Parameter], correction: Sequence[torch.Tensor | None], lr: float
) -> None:
    """``w -= lr * correction`` for each parameter with a correction."""
    with torch.no_grad():
        for param, term in zip(params, correction, strict=True):
            if term is not None:
                param.sub_(term.to(param.device, param.dtype), alpha=lr)


class Correction(TrainHook):
    """Moves each parameter by ``-lr_t (c - c_i)`` after every optimizer step: exactly
    SCAFFOLD's corrected step for plain SGD; for AdamW and momentum it keeps the
    correction out of the adaptive and momentum statistics (as OpenFedLLM does).
    Parameters without a correction (personal ones) are left alone.

    Args:
        correction: ``c - c_i`` by parameter name.
    """

    def __init__(self, correction: Params) -> None:
        self.correction = correction
        self.aligned: list[torch.Tensor | None] = []

    def begin(
        self, names: Sequence[str], params: Sequence[torch.nn.Parameter], start: Params
    ) -> None:
        self.aligned = [self.correction.get(n) for n in names]

    def after_step(self, params: Sequence[torch.nn.Parameter], lr: float) -> None:
        apply_correction(params, self.aligned, lr)


class ScaffoldPlugin(ClientPlugin):
    """The server's ``c`` arrives as this plug-in's part of the broadcast; the client's
    ``c_i`` lives in its state slot (zero until it first trains); ``c_i+ - c_i`` goes
    back as its part of the reply (see :mod:`fedllm.algorithms.scaffold.variates`)."""

    name = "scaffold"
    keeps_state = True

    def __init__(self) -> None:
        self._changes: dict[str, Params] = {}

    def train_hook(self, ctx: ClientContext) -> TrainHook:
        variates = ControlVariates(self._store(ctx), ctx.part)
        return Correction(variates.correction(ctx.client_id, ctx.part))

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        variates = ControlVariates(self._store(ctx), ctx.part)
        lr_sum = update.metrics["lr_sum"]
        self._changes[ctx.client_id] = variates.advance(
            ctx.client_id, ctx.part, update.delta, lr_sum
        )
        return update

    def encode(self, ctx: ClientContext, update: ClientUpdate) -> Params:
        return self._changes.pop(ctx.client_id)

    @staticmethod
    def _store(ctx: ClientContext) -> ClientStateStore:
        if ctx.store is None:
            raise RuntimeError("SCAFFOLD's client half needs its state slot")
        return ctx.store
