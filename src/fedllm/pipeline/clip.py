"""Clip each client's update to a maximum global L2 norm."""

from __future__ import annotations

import math

import torch

from fedllm.pipeline.stage import Requirements, RoundReport, StageState
from fedllm.types import Params


def global_norm(params: Params) -> float:
    """L2 norm of all tensors taken together (computed in float64)."""
    total = sum(float(t.detach().double().pow(2).sum()) for t in params.values())
    return math.sqrt(total)


class ClipStage:
    """Scale an update down so its global L2 norm is at most ``max_norm``.

    Args:
        max_norm: the bound, in the update's own units (> 0).
    """

    name = "clip"

    def __init__(self, max_norm: float) -> None:
        if not max_norm > 0:
            raise ValueError(f"clip max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm

    def requires(self) -> Requirements:
        return Requirements(bounds_norm=True)

    def initial_state(self) -> StageState:
        return {"max_norm": self.max_norm}

    def client(self, update: Params, state: StageState) -> tuple[Params, dict[str, float]]:
        norm = global_norm(update)
        scale = min(1.0, state["max_norm"] / norm) if norm > 0 else 1.0
        if scale < 1.0:
            with torch.no_grad():
                update = {k: v * scale for k, v in update.items()}
        return update, {"norm": norm, "clipped": float(scale < 1.0)}

    def server(self, combined: Params, state: StageState) -> Params:
        return combined

    def next_state(self, state: StageState, report: RoundReport) -> StageState:
        return state
