"""A client's local optimizer state, kept across rounds (DiLoCo's inner AdamW).

By default every round starts a fresh optimizer. With
``client.keep_optimizer_state`` each client's optimizer state (AdamW's step
count and moments, SGD's momentum buffer) is saved after its round and loaded
before its next one, so local training continues where it stopped, as the
inner optimizer of DiLoCo (Douillard et al. 2023) does. The state is stored
as flat named tensors, ``"<parameter index>.<state key>"``.
"""

from __future__ import annotations

import torch

from fedllm.types import Params


def export_state(optimizer: torch.optim.Optimizer) -> Params:
    """The optimizer's per-parameter state as named CPU tensors (copies)."""
    out: Params = {}
    for index, entries in optimizer.state_dict()["state"].items():
        for key, value in entries.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"{index}.{key}"] = tensor.detach().to("cpu", copy=True)
    return out


def import_state(optimizer: torch.optim.Optimizer, state: Params) -> None:
    """Load per-parameter state saved by :func:`export_state` into a fresh optimizer
    over the same parameters (its hyper-parameters stay as configured)."""
    if not state:
        return
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    full = optimizer.state_dict()
    full["state"] = per_param
    optimizer.load_state_dict(full)
