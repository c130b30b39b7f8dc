"""Record-level DP-SGD in every client (``privacy.dp = 'local'``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.components import ALGORITHMS
from fedllm.composition import Algorithm, AlgorithmSetup

if TYPE_CHECKING:
    from fedllm.config import Config


@ALGORITHMS.register("local_dp")
class LocalDP:
    """Abadi et al. (2016) inside each client, each client with its own accountant; the
    server keeps a bound on every client's epsilon and stops the run before it passes
    the budget."""

    order = 5  # its gradients first: later hooks (FedProx) add to the noisy mean
    modes = ("federated", "centralized")
    modes_why = "the budget's stop is the server's, and clients training alone have none"

    def setting(self, config: Config) -> str | None:
        return "privacy.dp = 'local'" if config.privacy.dp == "local" else None

    def guarantee(self, config: Config) -> str:
        return "record-level DP-SGD in every client (the server sees only noisy updates)"

    def refuses(self, config: Config) -> list[tuple[str, str]]:
        return [("public_mix", "DP-SGD draws each step's lot from the client's own data")]

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        from fedllm.client.budget import client_steps
        from fedllm.privacy.ledger import LocalLedger
        from fedllm.privacy.local_dp.client import DPSGDPlugin
        from fedllm.privacy.plan import plan_local

        config = setup.ws.config
        privacy, client = config.privacy, config.client
        if privacy.dp != "local" or setup.mode == "local" or not setup.clients:
            return None
        assert privacy.clip_norm is not None  # the section's validator ensures it
        lot = client.batch_size * client.grad_accum
        sizes = setup.clients
        steps = {cid: client_steps(client, cid, n, config.seed) for cid, n in sizes.items()}

        def exposure(cid: str) -> tuple[float, int]:  # the sampling rate, then the fewest
            return min(lot, sizes[cid]) / max(1, sizes[cid]), -sizes[cid]

        exposed = max(sizes, key=exposure)
        bound = plan_local(privacy, sizes[exposed], lot, max(steps.values()), config.server.rounds)
        plans = {cid: bound.for_client(n, lot) for cid, n in sizes.items()}
        plugin = DPSGDPlugin(
            plans,
            privacy.clip_norm,
            client.grad_accum,
            steps,
            # a node never trusts the config it is sent for its noise: always the CSPRNG
            config.secure_randomness or setup.partial,
        )
        ledger = None if setup.partial else LocalLedger(bound, steps, _truncated(setup))
        return Algorithm("local_dp", client=plugin, server=ledger, disclosure="public")


def _truncated(setup: AlgorithmSetup) -> int | None:
    """The training records cut to ``data.seq_len`` over the clients that train (the
    pooled one: every client); None when some trains on data this process lacks (a
    Flower node's own file) or the build did not count them."""
    data = setup.ws.data
    if data is None:
        return None
    trains = list(data.clients) if setup.mode == "centralized" else list(setup.clients)
    counts = [data.clients[c].truncated if c in data.clients else None for c in trains]
    if any(count is None for count in counts):
        return None
    return sum(count or 0 for count in counts)
