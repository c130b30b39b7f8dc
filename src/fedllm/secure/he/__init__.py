"""Homomorphic aggregation (``he.enabled = true``): CKKS as the round protocol.

The server's half is the encrypted exchange (:mod:`fedllm.secure.he.server`), the client's
the handlers of its two phases (:mod:`fedllm.secure.he.client`). In the simulator the
federation's keys are made for the run; on Flower the server reads
``he.public_context`` and every node ``he.secret_context`` (``fedllm he-keys``).

The decrypting client floods the sum (:class:`fedllm.secure.he.ckks.Flooding`, statistical
security ``he.flooding_bits``) for ``server.rounds`` decryptions of sums of at most a
cohort's clients (:func:`most_summed`); the round record's ``he`` entry states the
noise: ``flooding_std`` per value of the sum, ``mean_error_std`` per value of the mean
(flooding and CKKS's own error together).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.secure.secagg import sum_only_problem, sum_only_refusals

if TYPE_CHECKING:
    from fedllm.client.side import ClientSide
    from fedllm.config import Config
    from fedllm.protocol.engine import ClientHandler
    from fedllm.secure.he.ckks import Flooding
    from fedllm.server.plugin import RoundContext, ServerPlugin

MISSING_EXTRA = "he.enabled = true needs the 'he' extra: pip install 'fedllm[he]' (tenseal)"


@ALGORITHMS.register("he")
class HomomorphicAggregation:
    """Additive aggregation under CKKS (TenSEAL); the server never holds a plaintext
    update or sum before a client decrypts it."""

    order = 96  # the round protocol; every other algorithm's hooks run inside it
    modes = ("federated",)
    modes_why = "it hides each client's update inside a federation's sum"

    def setting(self, config: Config) -> str | None:
        return "he.enabled = true" if config.he.enabled else None

    def guarantee(self, config: Config) -> str:
        return (
            "CKKS aggregation: the server adds ciphertexts it cannot read; one client "
            f"decrypts the sum and floods it (he.flooding_bits = {config.he.flooding_bits})"
        )

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        one_protocol = ("secagg", "a round has one protocol: choose secure aggregation or CKKS")
        return [one_protocol, *sum_only_refusals("encrypted")]

    def problem(self, config: Config) -> str | None:
        if not config.he.enabled:
            return None
        if importlib.util.find_spec("tenseal") is None:
            return MISSING_EXTRA
        problem = sum_only_problem("he.enabled = true", config.server.aggregator)
        if problem is not None:
            return problem
        if config.privacy.dp == "central":
            return (
                "he.enabled = true with privacy.dp = 'central': the decrypting client would see "
                "the cohort's clipped sum before the server adds the noise (and a client in a "
                "cohort of 3 could subtract its own update); use secagg.enabled = true with "
                "privacy.dp = 'central' (distributed DP: the clients add the noise), or "
                "privacy.dp = 'local'"
            )
        if config.runtime.engine == "flower":
            missing = [
                f"he.{key}"
                for key in ("public_context", "secret_context")
                if getattr(config.he, key) is None
            ]
            if missing:
                return (
                    f"he.enabled = true on Flower needs {' and '.join(missing)}: the server "
                    "reads the public context, every node the secret one (make both with "
                    "`fedllm he-keys DIR`)"
                )
        return None

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.secure.he import ckks as he
        from fedllm.secure.he.client import HEClientPhases
        from fedllm.secure.he.parts import CIPHERTEXT_BYTES, ENCRYPT_S, FLOODING_STD
        from fedllm.secure.he.server import HEExchange

        config = setup.ws.config
        if not config.he.enabled or setup.mode != "federated":
            return None
        settings = config.he
        secret_file, public_file = settings.secret_context, settings.public_context
        if secret_file is None or public_file is None:  # the simulator: keys for this run
            keys = he.make_keys()
            secret: bytes | Callable[[], bytes] = keys.secret_context
            public: bytes | None = keys.public_context
        else:  # a deployment: each side reads its own file, when it needs it
            secret = partial(read_context, secret_file, "he.secret_context")
            public = None
        flooding = he.Flooding(
            bits=settings.flooding_bits,
            decryptions=config.server.rounds,
            summed=most_summed(config),
        )

        def client_phases(side: ClientSide) -> Mapping[str, ClientHandler]:
            return HEClientPhases(side, secret, flooding).handlers()

        if setup.partial:  # a Flower node: the client half only
            return Algorithm("he", client_phases=client_phases, disclosure="public")
        if public is None:
            assert public_file is not None
            public = read_context(public_file, "he.public_context")
        degree, scale = he.context_parameters(public)
        return Algorithm(
            "he",
            server=flooding_record(flooding, degree, scale),
            exchange=HEExchange(public),
            client_phases=client_phases,
            disclosure="public",
            public_metrics=frozenset({ENCRYPT_S, CIPHERTEXT_BYTES, FLOODING_STD}),
        )


def most_summed(config: Config) -> int:
    """The most updates one encrypted sum can hold: the cohort's size
    (``server.clients_per_round``), or every client under Poisson sampling, whose
    cohort size varies."""
    clients = config.data.num_clients
    if config.server.sampling == "poisson":
        return clients
    return min(config.server.clients_per_round, clients)


def flooding_record(flooding: Flooding, degree: int, scale: float) -> ServerPlugin:
    """A server plug-in that adds the decryption's noise to the round record's ``he``
    entry once a client decrypted: ``flooding_bits``, ``flooding_std`` (the flooding
    noise per value of the decrypted sum, as the decrypting client computes it from the
    same settings) and ``mean_error_std`` (per value of the mean the pipeline gets: the
    flooding and CKKS's error of the accepted clients' sum, over the accepted weight).
    Value units. (Defined here, on first use: the plug-in base imports torch, which a
    config load must not.)

    Args:
        flooding: the decrypting clients' settings.
        degree: the ring dimension N of the federation's keys.
        scale: their encoding scale.
    """
    from fedllm.secure.he import ckks as he
    from fedllm.server.plugin import ServerPlugin

    class FloodingRecord(ServerPlugin):
        name = "he"

        def end_round(self, ctx: RoundContext) -> None:
            costs = ctx.record.extra.get("he")
            if not isinstance(costs, dict) or "decrypted_by" not in costs:
                return
            noise = flooding.std(degree, scale)
            ckks = he.decryption_error_std(degree, scale, len(ctx.record.accepted))
            costs.update(
                flooding_bits=flooding.bits,
                flooding_std=noise,
                mean_error_std=math.hypot(noise, ckks) / ctx.accepted_weight,
            )

    return FloodingRecord()


def read_context(path: str, setting: str) -> bytes:
    """A serialized TenSEAL context from ``path``.

    Raises:
        ValueError: the file cannot be read, naming the setting.
    """
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise ValueError(f"{setting} = {path!r} cannot be read: {error.strerror}") from error
