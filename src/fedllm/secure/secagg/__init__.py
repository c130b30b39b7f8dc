"""Secure aggregation (``secagg.enabled = true``): SecAgg+ as the round protocol.

The server's half is the four-phase exchange (:mod:`fedllm.secure.secagg.server`); the
client's, the handlers of those phases around its training
(:mod:`fedllm.secure.secagg.client`). With ``privacy.dp = 'central'`` the noise moves to the
clients (distributed DP, :class:`fedllm.privacy.central_dp.noise.DistributedNoiseStage`).

With ``secagg.roster`` (Flower only) the advertised keys are signed: each node signs
with its authentication private key (``auth-key`` in its node config) and the server
and every node verify them against the roster of node public keys (Bell et al.'s
malicious-server variant, without the consistency check round).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fedllm.components import AGGREGATORS, ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.settings import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from fedllm.config import Config
    from fedllm.secure.keys import Roster
    from fedllm.secure.secagg.parts import NoiseStd

LOGGER = logging.getLogger(__name__)

AUTH_KEY = "auth-key"
"""The node-config entry naming the node's authentication private key (its
``node.key`` from ``fedllm certs node``, the SuperNode's ``--auth-supernode-private-key``)."""

ROSTER_FIX = (
    "give the server and every node the same roster file (`fedllm certs roster OUT_FILE "
    "--client NAME=PUBKEY_FILE ...` writes one from the public keys the nodes made with "
    "`fedllm certs node`)"
)

MIN_COHORT = 3
"""The fewest clients a SecAgg+ round can have (a neighbour graph of even degree >= 2)."""


@ALGORITHMS.register("secagg")
class SecAgg:
    """Bell et al. (CCS 2020), semi-honest server, on the engine exchange."""

    order = 95  # the round protocol; every other algorithm's hooks run inside it
    modes = ("federated",)
    modes_why = "it hides each client's update inside a federation's sum"

    def setting(self, config: Config) -> str | None:
        return "secagg.enabled = true" if config.secagg.enabled else None

    def guarantee(self, config: Config) -> str:
        from fedllm.secure.secagg.params import collusion_statement, threat_model

        # a roster (Flower only) makes every node sign its keys and verify its neighbours'
        parts = [threat_model(signed=config.secagg.roster is not None)]
        if config.privacy.dp == "central":
            colluders = config.secagg.tolerated_colluders
            parts.append(collusion_statement(config.server.min_clients, colluders))
        return "; ".join(parts)

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        return sum_only_refusals("masked")

    def problem(self, config: Config) -> str | None:
        return secagg_problem(config)

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.client.side import ClientSide
        from fedllm.protocol.engine import ClientHandler
        from fedllm.secure.secagg.client import SecAggClientPhases
        from fedllm.secure.secagg.params import min_sum_inputs
        from fedllm.secure.secagg.server import SecAggExchange, SecAggSettings

        config = setup.ws.config
        if not config.secagg.enabled or setup.mode != "federated":
            return None
        secagg, server = config.secagg, config.server
        noise_std = distributed_noise(config)
        roster = None if secagg.roster is None else read_roster(secagg.roster)
        signer = node_signer(setup, roster) if setup.partial else None

        def client_phases(side: ClientSide) -> Mapping[str, ClientHandler]:
            deterministic = not setup.partial and not config.secure_randomness
            phases = SecAggClientPhases(
                side, config.seed, deterministic, noise_std, signer=signer, roster=roster
            )
            return phases.handlers()

        if setup.partial:  # a Flower node: the client half only, keys from the OS CSPRNG
            return Algorithm("secagg", client_phases=client_phases, disclosure="public")
        if roster is not None:
            unlisted = sorted(set(setup.clients) - set(roster))
            if unlisted:
                raise ConfigError(
                    f"secagg.roster = {secagg.roster!r} has no key for client(s) {unlisted}, "
                    "whose advertised keys could then not be verified: add each client's "
                    f"node public key to its [clients] table; {ROSTER_FIX}"
                )
        settings = SecAggSettings(
            secagg.bits,
            secagg.clip_range,
            min(server.clients_per_round, len(setup.clients)),
            secagg.degree,
            secagg.threshold,
            min_sum_inputs(server.min_clients),  # distributed DP's noise shares rest on it
            roster,
            config.secure_randomness,
        )
        return Algorithm(
            "secagg",
            exchange=SecAggExchange(settings),
            client_phases=client_phases,
            disclosure="public",
        )


def read_roster(path: str) -> Roster:
    """The roster file of ``secagg.roster``: client id -> its node's public key.

    Raises:
        ConfigError: the file cannot be read or is not a roster, with the fix.
    """
    from fedllm.secure.roster import load_roster

    try:
        return load_roster(Path(path).expanduser())
    except OSError as error:
        raise ConfigError(
            f"secagg.roster = {path!r} cannot be read ({error.strerror}): {ROSTER_FIX}"
        ) from None
    except ValueError as error:
        raise ConfigError(f"secagg.roster: {error}") from None


def node_signer(setup: AlgorithmSetup, roster: Roster | None) -> ec.EllipticCurvePrivateKey | None:
    """The key this node signs its advertised keys with: its ``auth-key`` where the run
    has a roster; None without one (unsigned).

    A key that is not the roster's for the node's client is only warned about here: its
    keys are refused by the server and its neighbours, and the round says so.

    Raises:
        ConfigError: a roster but no ``auth-key``, or one that cannot be read.
    """
    from cryptography.hazmat.primitives import serialization

    from fedllm.secure.keys import load_node_key

    if roster is None:
        return None
    path = setup.node.get(AUTH_KEY)
    if path is None:
        raise ConfigError(
            "secagg.roster is set, so each node signs its SecAgg+ keys, but this node's "
            f"config has no {AUTH_KEY}: start flower-supernode with --node-config "
            f"\"... {AUTH_KEY}='/path/node-<i>.key'\" (its --auth-supernode-private-key)"
        )
    try:
        signer = load_node_key(Path(path).expanduser().read_bytes())
    except OSError as error:
        raise ConfigError(f"node {AUTH_KEY} = {path!r} cannot be read ({error.strerror})") from None
    except ValueError as error:
        raise ConfigError(f"node {AUTH_KEY} = {path!r} is not a node key: {error}") from None
    ssh = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    mine = signer.public_key().public_bytes(*ssh)
    for client in setup.clients:
        listed = roster.get(client)
        if listed is None or listed.public_bytes(*ssh) != mine:
            LOGGER.warning(
                "this node's %s is not the roster's key for client %r: the server and its "
                "neighbours will refuse its SecAgg+ keys",
                AUTH_KEY,
                client,
            )
    return signer


def distributed_noise(config: Config) -> NoiseStd | None:
    """The client's noise std from the broadcast, when central DP runs distributed."""
    from fedllm.pipeline.build import build_pipeline
    from fedllm.pipeline.stage import stage_state
    from fedllm.privacy.central_dp.noise import DistributedNoiseStage

    stages = [s for s in build_pipeline(config).stages if isinstance(s, DistributedNoiseStage)]
    if not stages:
        return None
    stage = stages[0]
    return lambda broadcast: stage.client_std(stage_state(stage, broadcast))


def sum_only_refusals(hidden: str) -> list[tuple[str, str]]:
    """The algorithms a protocol revealing only the sum (its updates ``hidden``, e.g.
    masked or encrypted) cannot run with, and why."""
    return [
        ("scaffold", f"its control variates travel beside the {hidden} update, in the clear"),
        ("fednova", "it needs each client's step count to reweight the updates"),
        ("hetero_rank", "it averages each entry over its holders, which a sum hides"),
    ]


BUILTIN_LINEAR = "mean"
"""The built-in streaming mean: linear by construction, so a config naming it is not
made to import torch to say so (``fedllm config`` stays light)."""


def sum_only_problem(setting: str, aggregator_name: str) -> str | None:
    """Why a protocol that reveals only the sum cannot run ``server.aggregator``, or None.

    A robust (batch) or non-linear aggregator needs every individual update.
    """
    if aggregator_name == BUILTIN_LINEAR:
        return None
    from fedllm.pipeline.stage import BatchAggregator

    aggregator = AGGREGATORS.get(aggregator_name)()
    if isinstance(aggregator, BatchAggregator) or not aggregator.linear:
        return (
            f"{setting} reveals only the sum, but server.aggregator = {aggregator_name!r} "
            "needs every individual update: use server.aggregator = 'mean'"
        )
    return None


def secagg_problem(config: Config) -> str | None:
    """Why ``config``'s secure aggregation cannot run, or None."""
    from fedllm.secure.secagg.graph import check_degree, default_degree
    from fedllm.secure.secagg.params import check_threshold, default_threshold, noise_shares
    from fedllm.secure.secagg.ring import RingSpec

    secagg, server = config.secagg, config.server
    if not secagg.enabled:
        return None
    cohort = server.clients_per_round
    if secagg.roster is not None and config.runtime.engine != "flower":
        return (
            "secagg.roster signs the advertised keys with the Flower nodes' authentication "
            "keys; the simulator's clients hold none: set runtime.engine = 'flower', or "
            "remove secagg.roster"
        )
    if server.weighting != "uniform":
        return (
            "secagg.enabled = true sums equally weighted updates (a weight per client would "
            "reveal its size and let it scale its update): set server.weighting = 'uniform'"
        )
    if server.sampling == "poisson":
        return (
            f"secagg.enabled = true sizes its ring for a fixed cohort of "
            f"server.clients_per_round = {cohort}; server.sampling = {server.sampling!r} can "
            "sample more: use server.sampling = 'uniform' (or 'size', 'trace')"
        )
    if cohort < MIN_COHORT:
        return f"secagg.enabled = true needs server.clients_per_round >= {MIN_COHORT}, got {cohort}"
    problem = sum_only_problem("secagg.enabled = true", server.aggregator)
    if problem is not None:
        return problem
    if config.privacy.dp == "central" and config.privacy.adaptive_clip:
        return (
            "secagg.enabled = true with privacy.adaptive_clip = true would send each client's "
            "clipped/not-clipped bit in the clear: set privacy.adaptive_clip = false"
        )
    colluders = secagg.tolerated_colluders
    if config.privacy.dp == "central":
        try:
            noise_shares(server.min_clients, colluders)
        except ValueError as error:
            return str(error)
    elif colluders:
        return (
            f"secagg.tolerated_colluders = {colluders} sizes distributed DP's noise shares, "
            "but without privacy.dp = 'central' no noise is added: set "
            "secagg.tolerated_colluders = 0 or privacy.dp = 'central'"
        )
    try:
        RingSpec(secagg.bits, secagg.clip_range, cohort)
        degree = secagg.degree if secagg.degree is not None else default_degree(cohort)
        check_degree(cohort, degree)
        threshold = secagg.threshold if secagg.threshold is not None else default_threshold(degree)
        check_threshold(degree, threshold)
    except ValueError as error:
        return f"{error} (server.clients_per_round = {cohort})"
    return None
