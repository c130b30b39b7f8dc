"""From a reply to an update the aggregate may take, or the reason it may not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedllm.client.side import NUM_EXAMPLES
from fedllm.message import Message
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.server.validate import find_problem
from fedllm.types import ClientId, ClientUpdate, Params, split_parts


def read_update(client_id: ClientId, reply: Message) -> ClientUpdate:
    """The update a reply carries (its tensors split from the plug-ins' parts).

    Never raises: a malformed reply becomes an update that validation refuses.
    """
    arrays = reply.arrays
    delta, parts = split_parts(arrays) if isinstance(arrays, Mapping) else (arrays, {})
    metrics = reply.metrics if isinstance(reply.metrics, dict) else {}
    count = reply.config.get(NUM_EXAMPLES) if isinstance(reply.config, dict) else None
    return ClientUpdate(client_id, delta, count, metrics, parts)  # type: ignore[arg-type]


def screen(
    update: ClientUpdate,
    reference: Params,
    plugins: Sequence[ServerPlugin],
    ctx: RoundContext,
) -> ClientUpdate | str:
    """The update after every plug-in's :meth:`~ServerPlugin.decode`, validated against
    ``reference`` and every plug-in's :meth:`~ServerPlugin.check`; or the first reason
    to refuse it."""
    for plugin in plugins:
        decoded = plugin.decode(ctx, update)
        if isinstance(decoded, str):
            return decoded
        update = decoded
    problem = find_problem(update, reference)
    if problem is not None:
        return problem
    for plugin in plugins:
        problem = plugin.check(ctx, update)
        if problem is not None:
            return problem
    return update
