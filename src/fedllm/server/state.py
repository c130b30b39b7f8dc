"""The server's state between rounds."""

from __future__ import annotations

from dataclasses import dataclass

from fedllm.types import Params


@dataclass
class ServerState:
    """Global trainable parameters and the server optimizer's state.

    Attributes:
        round: the last completed round (0 before any training).
        params: the global trainable state that is broadcast.
        optimizer_state: the server optimizer's tensors.
    """

    round: int
    params: Params
    optimizer_state: Params
