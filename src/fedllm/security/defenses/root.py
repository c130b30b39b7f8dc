"""FLTrust's root update: the server trains on the public corpus as a client would."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedllm.client.budget import with_fixed_steps
from fedllm.client.side import ClientSide
from fedllm.data import ClientData
from fedllm.data.public import PublicData
from fedllm.message import ROUND, Message
from fedllm.types import Params

if TYPE_CHECKING:  # the workspace is built above this layer; only read here
    from fedllm.federation.setup import Workspace

ROOT_ID = "fltrust_root"
"""The pseudo-client the server trains its root update as (its seeds derive from it)."""


class RootTrainer:
    """``g_0``: ``steps`` steps of the clients' trainer (their optimizer, batch size and
    learning rate; no FedProx term, no drift correction, no per-client budget) on the
    public corpus's training split, from the broadcast, seeded by the round. It trains
    where the corpus lies: nothing crosses the network, no byte is counted.

    Args:
        ws: the run's model and config (the server trains the clients' one model).
        public: the public corpus.
        steps: local steps of each root update.
    """

    def __init__(self, ws: Workspace, public: PublicData, steps: int) -> None:
        config = ws.config
        cfg = with_fixed_steps(config.client, steps).model_copy(
            update={"prox_mu": 0.0, "drift_correction": "none"}
        )
        data = {ROOT_ID: ClientData(ROOT_ID, public.train, public.eval)}
        self.side = ClientSide(data, cfg, config.seed, ws.pad_id, ws.model)

    def __call__(self, broadcast: Params, round_num: int) -> Params:
        """The root update's delta against ``broadcast`` in round ``round_num``."""
        message = Message(arrays=broadcast, config={ROUND: round_num})
        return self.side.run(ROOT_ID, message).delta
