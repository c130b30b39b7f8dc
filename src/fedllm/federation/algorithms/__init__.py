"""The built-in algorithms, one file each: how a config turns into client and server
plug-ins. A user adds one by registering an :class:`AlgorithmFactory` in
:data:`fedllm.components.ALGORITHMS` before the run starts."""

from fedllm.federation.algorithms.base import (
    Algorithm,
    AlgorithmFactory,
    AlgorithmSetup,
    ModelView,
    compose,
)

__all__ = ["Algorithm", "AlgorithmFactory", "AlgorithmSetup", "ModelView", "compose"]
