"""fedllm: federated large language models on private text.

Public API::

    from fedllm import load_config, run, resume, RunResult
    result = run(load_config("configs/demo.toml"), "runs/demo")

Names are imported lazily, so ``import fedllm.config`` stays light.
"""

from __future__ import annotations

from fedllm.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "config",
    "ConfigError": "config",
    "load_config": "config",
    "RunResult": "federation.runner",
    "run": "federation.runner",
    "resume": "federation.runner",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
