"""Optimizer-state offload: a local optimizer whose state lives in CPU memory.

ZeRO-Offload's idea (Ren et al. 2021) for one device, built on torch's own
optimizer step hooks rather than a new optimizer class: the optimizer is
built over fp32 master copies of the trainable parameters in CPU memory, so
its state (AdamW's two moments: 8 bytes per parameter) never takes GPU
memory. Before each step the parameters and their gradients are copied down
into the master copies; after it the updated master weights are copied back
up (rounded to the parameters' dtype: with bfloat16 weights the fp32 master
keeps the small updates that rounding would lose) and the device gradients
are dropped. Copying the parameters down as well keeps anything done to them
between steps (SCAFFOLD's correction): where a parameter differs from its
rounded master copy, its value wins; this costs one more transfer per step.

On the CPU the copies are plain copies, so an offloaded AdamW takes exactly
the steps of a plain one (the unit tests check this); ``client.offload``
itself is refused without CUDA, where it would only cost time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def offloaded_optimizer(
    params: Sequence[torch.nn.Parameter], build: OptimizerFactory
) -> torch.optim.Optimizer:
    """``build`` over CPU fp32 master copies of ``params``, kept in step with them by hooks.

    The returned optimizer is used as the plain one would be (``step``,
    ``zero_grad``, ``param_groups`` for learning-rate schedules); its
    ``step`` reads ``params``' gradients and writes ``params``.
    """
    device_params = list(params)
    master = [
        torch.nn.Parameter(p.detach().to("cpu", torch.float32, copy=True)) for p in device_params
    ]
    optimizer = build(master)

    def down(_opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        with torch.no_grad():
            for param, copy in zip(device_params, master, strict=True):
                held = param.detach().to("cpu", torch.float32)
                if param.dtype != torch.float32:  # keep the master's extra precision
                    unchanged = held.eq(copy.to(param.dtype).to(torch.float32))
                    held = torch.where(unchanged, copy, held)
                copy.copy_(held)
                grad = param.grad
                copy.grad = None if grad is None else grad.to("cpu", torch.float32, copy=True)

    def up(_opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        with torch.no_grad():
            for param, copy in zip(device_params, master, strict=True):
                param.copy_(copy)
                param.grad = None

    optimizer.register_step_pre_hook(down)
    optimizer.register_step_post_hook(up)
    return optimizer
