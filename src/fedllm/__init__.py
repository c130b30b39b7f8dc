"""fedllm: federated large language models on private text.

Public API::

    from fedllm import load_config, run, resume, RunResult
    result = run(load_config("configs/demo.toml"), "runs/demo")

Names are imported lazily, so ``import fedllm.config`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "fedllm.config",
    "ConfigError": "fedllm.config",
    "load_config": "fedllm.config",
    "RunResult": "fedllm.federation.runner",
    "run": "fedllm.federation.runner",
    "resume": "fedllm.federation.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedllm' has no attribute {name!r}")
