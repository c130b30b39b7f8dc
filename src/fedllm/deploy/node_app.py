"""The ClientApp component of a fedllm deployment (``[tool.flwr.app.components]``).

Every message goes to the node's fedllm worker (:mod:`fedllm.deploy.link`), which holds
the client side built once; this module imports no torch, so Flower's process per
message starts in about a second. The node's config names its data and state folder
(see :mod:`fedllm.deploy.apps`); the run config carries the fedllm configuration.
"""

from __future__ import annotations

from fedllm.deploy.link import WorkerSpec, ask, check_node_config, identify
from fedllm.runtime.flower.light import Settings, make_forwarding_client_app


def node_spec(node_config: Settings, run_config: Settings) -> WorkerSpec:
    """The worker that answers for this node in this run (a bad node config is refused
    here, before a worker starts)."""
    check_node_config(node_config)
    node = {str(k): str(v) for k, v in node_config.items()}
    return WorkerSpec(str(run_config.get("config", "")), node)


def node_identity(node_config: Settings, run_config: Settings) -> tuple[str, int]:
    """Who the node is, as its worker (started now: the model loads while the other
    nodes answer) says."""
    return identify(node_spec(node_config, run_config))


def forward(node_config: Settings, run_config: Settings, phase: str, payload: bytes) -> bytes:
    """The worker's reply to one encoded message."""
    return ask(node_spec(node_config, run_config), phase, payload)


client_app = make_forwarding_client_app(node_identity, forward)
