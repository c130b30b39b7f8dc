"""The ClientApp component of a fedllm deployment (``[tool.flwr.app.components]``).

Every message goes to the node's fedllm worker (:mod:`fedllm.deploy.link`), which holds
the client side built once; this module imports no torch, so Flower's process per
message starts in about a second. The node's config names its data and state folder
(see :mod:`fedllm.deploy.apps`); the run config carries the fedllm configuration.

Flower sends a ClientApp's exception to the server as the error reply's reason,
``str(type(err)) + ":<'" + str(err) + "'>"`` (``flwr/supernode/runtime/run_clientapp.py``),
which the server keeps in ``metrics.jsonl``. So the app's steps are :func:`reported`:
their exceptions say a category of :data:`~fedllm.deploy.link.CATEGORIES` only (or a
:class:`~fedllm.deploy.errors.NodeRefusal`'s message), the detail goes to the node's
``clientapp.log``.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ParamSpec, TypeVar

from fedllm.deploy.errors import NodeRefusal
from fedllm.deploy.link import (
    CLIENT_FAILED,
    CONFIG_REFUSED,
    NodeConfigError,
    WorkerError,
    WorkerSpec,
    ask,
    category,
    check_node_config,
    identify,
    node_state_dir,
    note,
    refusal,
)
from fedllm.deploy.policy import NodePolicy
from fedllm.runtime.flower.light import Settings, make_forwarding_client_app

P = ParamSpec("P")
R = TypeVar("R")


def node_spec(node_config: Settings, run_config: Settings) -> WorkerSpec:
    """The worker that answers for this node in this run (a bad node config, its
    policy values included, is refused here, before a worker starts)."""
    check_node_config(node_config)
    NodePolicy.from_node_config(node_config)
    node = {str(k): str(v) for k, v in node_config.items()}
    return WorkerSpec(str(run_config.get("config", "")), node)


def node_identity(
    node_config: Settings, run_config: Settings, challenge: bytes, node_id: int
) -> dict[str, int | str | bytes]:
    """Who the node is, as its worker (started now: the model loads while the other
    nodes answer) says, signed with the node's ``auth-key`` where it has one (the
    server's ``challenge``, this Flower ``node_id``: see :mod:`fedllm.deploy.admission`)."""
    client, train = identify(node_spec(node_config, run_config))
    signature = b""
    if "auth-key" in node_config:
        from fedllm.deploy.admission import sign_identity

        key = Path(str(node_config["auth-key"]))
        signature = sign_identity(key, challenge, node_id, client, train)
    return {"client": client, "train": train, "signature": signature}


def forward(node_config: Settings, run_config: Settings, phase: str, payload: bytes) -> bytes:
    """The worker's reply to one encoded message."""
    return ask(node_spec(node_config, run_config), phase, payload)


def reported(step: Callable[P, R]) -> Callable[P, R]:
    """``step`` (a ClientApp step whose first argument is the node config) whose exceptions
    say what the server may see: a category of :data:`~fedllm.deploy.link.CATEGORIES`
    (a bad node config: ``CONFIG_REFUSED``; anything not already a category:
    ``CLIENT_FAILED``), or a NodeRefusal's message cut to ``REFUSAL_CHARS``. The
    traceback goes to the node's ``clientapp.log``."""

    @functools.wraps(step)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return step(*args, **kwargs)
        except NodeRefusal as err:
            raise NodeRefusal(refusal(str(err))) from None
        except WorkerError as err:  # its detail is in the node's logs already
            raise WorkerError(category(str(err))) from None
        except Exception as err:
            failed = CONFIG_REFUSED if isinstance(err, NodeConfigError) else CLIENT_FAILED
            node = args[0] if args and isinstance(args[0], Mapping) else {}
            note(node_state_dir(node), f"{step.__name__}: {failed}\n{traceback.format_exc()}")
        raise WorkerError(failed)

    return guarded


client_app = make_forwarding_client_app(reported(node_identity), reported(forward))
