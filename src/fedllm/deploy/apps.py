"""The Flower components of a fedllm deployment (``[tool.flwr.app.components]``).

``server_app`` runs the configuration's federation over the SuperLink's grid and
writes the usual run directory; the ClientApp (:mod:`fedllm.deploy.node_app`) hands
each message to the node's worker, which builds the node's client side from the same
configuration once (:func:`built_node`) and answers for one client. The run config carries the
fedllm configuration itself (``config``, its TOML text: the same on every machine),
the run directory on the server's machine (``out``), how many nodes to wait for
(``nodes``) and, to continue a run, its new total of rounds (``resume-rounds``).
A node's config says whose data it holds: either
``partition-id`` (an index into the clients the configuration builds from its
corpus, for trying it out) or ``data`` (the organisation's own ``.jsonl``/``.txt``
file, with an optional ``client`` name); where its client state lives
(``state-dir``, kept across node restarts); and, for SecAgg+ with ``secagg.roster``,
its authentication private key (``auth-key``: the ``node.key`` of ``fedllm certs node``,
which signs its advertised keys). It also says what the server's configuration may
make the node do (:mod:`fedllm.deploy.policy`): which files it reads (``public``,
``corpus``, and its own ``model``, ``roster`` and ``he-secret-context`` in place of the
configuration's), the privacy the run must have (``require-dp``,
``min-noise-multiplier``, ``require-secagg``) and how far it goes (``max-rounds``,
``max-bytes``). The server learns each node's client
id and training-set size, never its path or text: evaluation is federated too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import tomllib

from fedllm.config import Config, ConfigError, parse_config
from fedllm.data import FederatedData, build_federated_data
from fedllm.data.apart import built_apart
from fedllm.data.build import build_own_client
from fedllm.data.public import build_public_data
from fedllm.deploy.admission import Admission, Members, NodeAnswer, Refused, admit
from fedllm.deploy.link import check_node_config
from fedllm.deploy.policy import NodePolicy, run_noise
from fedllm.federation.modes import node_client_side
from fedllm.federation.rundir import FLOWER_DONE
from fedllm.federation.runner import resume, run
from fedllm.federation.setup import prepare
from fedllm.protocol.engine import ClientHandler
from fedllm.runtime.flower.apps import (
    ERROR,
    Grid,
    Identity,
    Settings,
    make_server_app,
    node_identities,
)
from fedllm.runtime.flower.engine import flower_engines
from fedllm.secure.roster import load_roster
from fedllm.types import ClientId

LOG = logging.getLogger(__name__)

NODE_WAIT_S = 120.0
"""How long the ServerApp waits for the nodes to connect (seconds)."""
NODE_ANSWER_S = 1800.0
"""How long it then waits for them to say who they are: each builds its client side
(the base model loads) before it answers (seconds)."""


def serve(grid: Grid, run_config: Settings) -> None:
    """The federation of ``run_config["config"]``, over ``grid``, into ``run_config["out"]``.

    The clients are the nodes admitted (:mod:`fedllm.deploy.admission`: the members of
    ``runtime.roster`` proving their keys, or of ``runtime.clients``, or every node that
    answers), with the training-set sizes they announce; ``admission.json`` in the run
    directory records who was admitted and who refused.

    Raises:
        AdmissionError: the nodes that answered cannot make the federation.
    """
    config = run_config_config(run_config)
    out = Path(str(run_config["out"]))
    expected = int(run_config["nodes"])
    answers = node_identities(grid, expected, NODE_WAIT_S, NODE_ANSWER_S)
    admission = admitted_nodes(answers, federation_members(config), expected)
    nodes = {client: node for client, (node, _size) in admission.admitted.items()}
    remote = {client: size for client, (_node, size) in sorted(admission.admitted.items())}
    engines = flower_engines(grid, nodes, config.server.reply_timeout_s)
    rounds = run_config.get("resume-rounds")
    try:
        if rounds:
            resume(out, [f"server.rounds={int(rounds)}"], engine=engines, remote=remote)
        else:
            run(config, out, overwrite=True, engine=engines, remote=remote)
    finally:
        admission.write(out)
    (out / FLOWER_DONE).write_text(str(run_config.get("token", "")))


def federation_members(config: Config) -> Members | None:
    """The members ``runtime.roster`` or ``runtime.clients`` names; None: not named.

    Raises:
        ConfigError: the roster file is missing or unreadable.
    """
    if config.runtime.roster is not None:
        try:
            return Members.from_roster(load_roster(Path(config.runtime.roster)))
        except (OSError, ValueError) as err:
            raise ConfigError(f"runtime.roster = {config.runtime.roster!r}: {err}") from None
    if config.runtime.clients:
        return Members.named(config.runtime.clients)
    return None


def admitted_nodes(
    answers: list[tuple[int, bytes, Identity]], members: Members | None, expected: int
) -> Admission:
    """:func:`~fedllm.deploy.admission.admit` over the nodes' raw answers (an error or
    a malformed answer is refused, not trusted), each refusal logged for the operator."""
    parsed: list[NodeAnswer] = []
    malformed: list[Refused] = []
    for node, challenge, identity in answers:
        if ERROR in identity:
            malformed.append(Refused(node, "?", f"it answered with an error: {identity[ERROR]}"))
            continue
        client, train, signature = (identity.get(k) for k in ("client", "train", "signature"))
        if not isinstance(client, str) or not isinstance(train, int) or train < 0:
            malformed.append(Refused(node, str(client), "a malformed identity answer"))
            continue
        sig = signature if isinstance(signature, bytes) else b""
        parsed.append(NodeAnswer(node, client, train, challenge, sig))
    admission = admit(parsed, members, expected, malformed)
    for no in admission.refused:
        LOG.warning("refused node %d (answering as %r): %s", no.node, no.client, no.reason)
    return admission


def run_config_config(run_config: Settings) -> Config:
    """The fedllm configuration a run config carries (``config``: TOML text).

    Raises:
        ConfigError: it is missing, not TOML, or not a valid configuration.
    """
    return _parse(str(run_config.get("config", "")))


@cache
def _parse(text: str) -> Config:
    if not text.strip():
        raise ConfigError("the Flower run config carries no fedllm configuration (config='')")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"the Flower run config's fedllm configuration is not TOML: {err}"
        ) from None
    return parse_config(raw)


def pick_client(clients: Iterable[ClientId], partition: int) -> ClientId:
    """The ``partition``-th client id (sorted), the one node ``partition`` answers for.

    Raises:
        ConfigError: there are not that many clients.
    """
    ids = sorted(clients)
    if not 0 <= partition < len(ids):
        raise ConfigError(
            f"node partition-id = {partition}, but the federation has {len(ids)} clients "
            f"(partition-id 0 to {len(ids) - 1})"
        )
    return ids[partition]


def node_data(config: Config, tokenizer: Any, node_config: Settings) -> FederatedData:
    """The data this node holds: its own file (``data``), or one partition of the
    configuration's corpus (``partition-id``) with the corpus's test split.

    Raises:
        NodeConfigError: neither is given, or a bad ``client`` name.
        NodeRefusal: ``data.source`` is a file the node's ``corpus`` does not list.
        DataError: the node's file is unusable.
    """
    check_node_config(node_config)
    if "data" in node_config:
        path = str(node_config["data"])
        client = str(node_config.get("client", Path(path).stem))
        own = build_own_client(
            config.data, tokenizer, path, client, config.seed, config.privacy.per_record()
        )
        return FederatedData({client: own}, [])
    NodePolicy.from_node_config(node_config).check_corpus(config.data.source)
    partition = int(node_config["partition-id"])
    return built_apart(lambda: _one_partition(config, tokenizer, partition))


def _one_partition(config: Config, tokenizer: Any, partition: int) -> FederatedData:
    """Partition ``partition`` of the config's corpus and the corpus's test split."""
    whole = build_federated_data(
        config.data, tokenizer, config.seed, per_record=config.privacy.per_record()
    )
    client = pick_client(whole.clients, partition)
    return FederatedData({client: whole.clients[client]}, whole.test)


def built_node(
    config_text: str, node_config: Mapping[str, str]
) -> tuple[ClientId, int, ClientHandler]:
    """The node's client id, training examples and client side, built in this process
    (by the node's worker; tests call it directly).

    The node's policy (:mod:`fedllm.deploy.policy`) comes first: the files the
    configuration names are checked, and the node's own put in their place, before
    anything is read; the run's privacy before the model loads (a derived DP noise
    multiplier once the node's data is counted); every message and reply of the
    client side it returns is checked too.

    Raises:
        NodeConfigError: a bad node config (no data, a bad name, a bad policy value).
        NodeRefusal: the configuration breaks a rule of the node's config.
    """
    return _built(config_text, tuple(sorted(node_config.items())))


@cache
def _built(
    config_text: str, node_key: tuple[tuple[str, str], ...]
) -> tuple[ClientId, int, ClientHandler]:
    node_config = dict(node_key)
    check_node_config(node_config)  # before the model loads
    policy = NodePolicy.from_node_config(node_config)
    config = policy.node_run_config(_parse(config_text))  # before any file is read
    policy.check_run(config)
    ws = prepare(config, with_data=False)
    ws.data = node_data(config, ws.tokenizer, node_config)
    ws.public = build_public_data(config, ws.tokenizer)
    state_dir = Path(node_config.get("state-dir", "fedllm-node-state"))
    [(client, held)] = ws.data.clients.items()
    noise = run_noise(config, client, len(held.train))
    policy.check_run(config, noise)
    handler = node_client_side(ws, state_dir, node_config)
    return client, len(held.train), policy.guard(handler, config, noise, state_dir)


server_app = make_server_app(serve)
