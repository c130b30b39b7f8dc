"""Clip each client's update to a maximum global L2 norm."""

from __future__ import annotations

import math

import torch

from fedllm.pipeline.stage import Constant, Parameter, Requirements, RoundReport, StageState
from fedllm.types import Params


def global_norm(params: Params) -> float:
    """L2 norm of all tensors taken together (computed in float64)."""
    total = sum(float(t.detach().double().pow(2).sum()) for t in params.values())
    return math.sqrt(total)


class ClipStage:
    """Scale an update down so its global L2 norm is at most ``max_norm``.

    Args:
        max_norm: the bound, in the update's own units (> 0): a constant, or an
            estimator that moves it between rounds (its value reaches the clients
            in the broadcast's config).
    """

    name = "clip"

    def __init__(self, max_norm: float | Parameter) -> None:
        self.max_norm = Constant(max_norm) if isinstance(max_norm, int | float) else max_norm
        if not self.max_norm.initial() > 0:
            raise ValueError(f"clip max_norm must be > 0, got {self.max_norm.initial()}")

    def requires(self) -> Requirements:
        return Requirements(bounds_norm=True)

    def initial_state(self) -> StageState:
        return {"max_norm": self.max_norm.initial()}

    def client(self, update: Params, state: StageState) -> tuple[Params, dict[str, float]]:
        norm = global_norm(update)
        scale = min(1.0, state["max_norm"] / norm) if norm > 0 else 1.0
        if scale < 1.0:
            with torch.no_grad():
                update = {k: v * scale for k, v in update.items()}
        return update, {"norm": norm, "clipped": float(scale < 1.0)}

    def server(self, combined: Params, state: StageState, report: RoundReport) -> Params:
        return combined

    def next_state(self, state: StageState, report: RoundReport) -> StageState:
        return {"max_norm": self.max_norm.next(state["max_norm"], report)}
