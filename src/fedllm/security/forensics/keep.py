"""The server plug-in that writes each round's accepted updates and their aggregate.

``updates/round_<r>.safetensors`` holds ``update/<client id>/<tensor>`` for every
accepted client update (its delta against the broadcast, as the aggregator received
it) and ``aggregate/<tensor>``, what the aggregation rule made of them (before any
plug-in's processing and the server optimizer). ``updates/round_<r>.json`` says, in
arrival order, ``clients``, their aggregation ``weights``, the clients the rule
``excluded``, the ``flagged`` ones where screening ran, and with a simulated attack
``malicious`` (client -> bool). A round that does not step the model writes nothing;
a replayed round (after a resume) writes its files again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.types import ClientId, ClientUpdate, Params

UPDATE = "update"
AGGREGATE = "aggregate"


def round_path(folder: Path, round_num: int) -> Path:
    """Where round ``round_num``'s tensors go (its sidecar: the same name, ``.json``)."""
    return folder / f"round_{round_num}.safetensors"


def tensors_of(kept: list[tuple[ClientId, Params, float]], aggregate: Params) -> Params:
    """The file's tensors: ``update/<client>/<name>`` and ``aggregate/<name>``."""
    tensors = {
        f"{UPDATE}/{cid}/{name}": t.detach().contiguous()
        for cid, delta, _ in kept
        for name, t in delta.items()
    }
    tensors.update({f"{AGGREGATE}/{n}": t.detach().contiguous() for n, t in aggregate.items()})
    return tensors


class UpdateKeeper(ServerPlugin):
    """Keeps each accepted update of the round, then writes them with the aggregate.

    Args:
        folder: where the files go (``updates/`` in the run directory).
        malicious: the malicious clients of a simulated attack (None: no attack).
    """

    name = "keep_updates"

    def __init__(self, folder: Path, malicious: Collection[ClientId] | None = None) -> None:
        self.folder = folder
        self.malicious = None if malicious is None else frozenset(malicious)
        self.kept: list[tuple[ClientId, Params, float]] = []
        self.aggregate: Params | None = None

    def begin_round(self, ctx: RoundContext) -> None:
        self.kept, self.aggregate = [], None

    def accept(self, ctx: RoundContext, update: ClientUpdate, weight: float) -> None:
        self.kept.append((update.client_id, update.delta, weight))

    def process(self, ctx: RoundContext, aggregate: Params) -> Params:
        self.aggregate = {k: v.detach().clone() for k, v in aggregate.items()}  # as made
        return aggregate

    def end_round(self, ctx: RoundContext) -> None:
        """Write the round (once every plug-in recorded its part: screening's flags)."""
        if self.aggregate is None:  # the model did not step
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = round_path(self.folder, ctx.round)
        tmp = path.with_suffix(".tmp")
        save_file(tensors_of(self.kept, self.aggregate), tmp)
        os.replace(tmp, path)
        sidecar: dict[str, Any] = {
            "round": ctx.round,
            "clients": [cid for cid, _, _ in self.kept],
            "weights": [weight for _, _, weight in self.kept],
            "excluded": list(ctx.record.extra.get("excluded", [])),
        }
        screening = ctx.record.extra.get("screening")
        if isinstance(screening, dict) and "flagged" in screening:
            sidecar["flagged"] = list(screening["flagged"])
        if self.malicious is not None:
            sidecar["malicious"] = {cid: cid in self.malicious for cid, _, _ in self.kept}
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1) + "\n")
        self.kept, self.aggregate = [], None
