"""Heterogeneous LoRA ranks in whole runs on the tiny model (r = 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedllm.algorithms.hetero_rank.plan import compact
from fedllm.client.side import NUM_EXAMPLES
from fedllm.config import ConfigError
from fedllm.federation.runner import run
from fedllm.federation.setup import prepare
from fedllm.message import ROUND, Message
from fedllm.wire import message_bytes
from tests.support.runs import stable, tiny_config

ALL_CLIENTS = ("server.clients_per_round=4", "server.rounds=2")


def test_mixed_ranks_train_record_their_rank_and_repeat(tmp_path: Path) -> None:
    cfg = tiny_config("method.rank_min=1", *ALL_CLIENTS)
    result = run(cfg, tmp_path / "hetlora")
    rounds = [r for r in result.records if r["round"] >= 1]
    assert all(r["skipped"] is None and len(r["accepted"]) == 4 for r in rounds)
    ranks = {c: int(m["lora_rank"]) for c, m in rounds[0]["client_metrics"].items()}
    assert set(ranks.values()) <= {1, 2, 3, 4} and len(set(ranks.values())) > 1
    for record in rounds:
        assert {c: m["lora_rank"] for c, m in record["client_metrics"].items()} == ranks
    # every client downloads the rank-4 state and uploads its rank's slices only
    ws = prepare(cfg)
    assert ws.data is not None
    initial, clients = ws.initial, ws.data.clients
    assert rounds[0]["bytes_down"] == 4 * message_bytes(Message(initial, {ROUND: 1}))

    def reply_bytes(client: str, arrays: dict[str, torch.Tensor]) -> int:
        config = {NUM_EXAMPLES: len(clients[client].train)}
        return message_bytes(Message(arrays, config, rounds[0]["client_metrics"][client]))

    sliced = sum(reply_bytes(c, compact(initial, r)) for c, r in ranks.items())
    assert rounds[0]["bytes_up"] == sliced
    assert rounds[0]["bytes_up"] < sum(reply_bytes(c, initial) for c in ranks)
    again = run(cfg, tmp_path / "again").records
    assert stable(again) == stable(result.records)  # ranks are fixed by the seed

    hetlora_loss = {r["round"]: r["train_loss"] for r in rounds}  # the default rule
    for rule in ("padded_deltas", "per_rank"):
        other = run(
            tiny_config("method.rank_min=1", f'method.rank_aggregation="{rule}"', *ALL_CLIENTS),
            tmp_path / rule,
        ).records
        loss = {r["round"]: r["train_loss"] for r in other if r["round"] >= 1}
        assert all(len(r["accepted"]) == 4 for r in other if r["round"] >= 1)
        assert loss[1] == hetlora_loss[1]  # the same start
        assert loss[2] != hetlora_loss[2]  # from another aggregate


@pytest.mark.parametrize("rule", ["hetlora", "padded_deltas", "per_rank"])
def test_components_no_client_trains(tmp_path: Path, rule: str) -> None:
    """Every client at rank 2 of 4: the deltas leave components 2 and 3 as they started;
    HetLoRA averages modules that are zero there, so they become zero."""
    ws = prepare(tiny_config())
    assert ws.data is not None
    everyone = ", ".join(f'"{c}" = 2' for c in ws.data.clients)
    ranks = f"method.ranks_by_client={{{everyone}}}"
    cfg = tiny_config(ranks, f'method.rank_aggregation="{rule}"', *ALL_CLIENTS)
    result = run(cfg, tmp_path / "two")
    assert all(len(r["accepted"]) == 4 for r in result.records if r["round"] >= 1)
    last = sorted((result.run_dir / "checkpoints").iterdir())[-1]
    final = load_file(last / "global.safetensors")
    assert set(final) == set(ws.initial)
    for name, tensor in final.items():
        axis = 0 if ".lora_A." in name else 1
        start = ws.initial[name]
        high = tensor.narrow(axis, 2, 2)
        if rule == "hetlora":  # G - (sum_k p_k) G, sum_k p_k = 1 up to rounding
            assert float(high.abs().max()) <= 1e-6 * float(start.abs().max()), name
        else:
            assert torch.equal(high, start.narrow(axis, 2, 2)), name
        assert not torch.equal(tensor.narrow(axis, 0, 2), start.narrow(axis, 0, 2)), name


def test_ranks_by_client_are_checked_against_the_federation(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"ranks_by_client names unknown client\(s\) \['nobody'\]"
    ):
        run(tiny_config("method.ranks_by_client={nobody=2}"), tmp_path / "x")
