"""Adding an algorithm touches no core module: a client plug-in and a batch aggregator
defined here, registered by name, run through the CLI and do what they say."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file

from fedllm.cli import main
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.components import AGGREGATORS, ALGORITHMS, load_builtin
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.config import load_config
from fedllm.federation.setup import prepare
from fedllm.pipeline.stage import BatchResult, WeightedUpdate
from fedllm.server.plugin import RoundContext, ServerPlugin
from fedllm.settings import Section
from fedllm.types import ClientUpdate, Params
from tests.support.runs import TINY

SENT: dict[tuple[int, str], Params] = {}
"""(round, client) -> the delta the client sent, recorded by the plug-in below."""


class RecordingPlugin(ClientPlugin):
    """Marks every update and keeps a copy of what leaves the client."""

    name = "recorder"

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        SENT[(ctx.round, ctx.client_id)] = {k: v.clone() for k, v in update.delta.items()}
        update.metrics["recorder/seen"] = float(ctx.round)
        return update


class Recorder:
    order = 90
    opt_in = True

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        return Algorithm("recorder", client=RecordingPlugin())


class DropLargest:
    """Leaves out the update with the largest norm, averages the rest (by weight)."""

    name = "test_drop_largest"
    linear = False

    def aggregate(self, updates: Sequence[WeightedUpdate], reference: Params) -> BatchResult:
        norms = [sum(float(t.double().pow(2).sum()) for t in u.delta.values()) for u in updates]
        worst = max(range(len(updates)), key=norms.__getitem__)
        kept = [u for i, u in enumerate(updates) if i != worst]
        total = sum(u.weight for u in kept)
        combined = {
            k: sum(u.delta[k].double() * u.weight for u in kept).div(total).to(ref.dtype)
            for k, ref in reference.items()
        }
        return BatchResult(combined, [updates[worst].client_id])


class BudgetSettings(Section):
    """The ``[algorithm.budget]`` section: an algorithm from outside brings its own."""

    rounds: int = Field(2, ge=1, description="Rounds the run may play.")


class BudgetServer(ServerPlugin):
    """Spends one unit of its budget per round; stops the run when it is spent."""

    name = "budget"

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.spent = 0

    def end_round(self, ctx: RoundContext) -> None:
        self.spent += 1

    def stop_reason(self) -> str | None:
        if self.spent < self.budget:
            return None
        return f"budget of {self.budget} spent after {self.spent} rounds"


class Budget:
    order = 95
    opt_in = True
    settings = BudgetSettings

    def build(self, setup: AlgorithmSetup) -> Algorithm | None:
        settings = setup.ws.config.settings_of("budget")
        return Algorithm("budget", server=BudgetServer(settings.rounds))


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    load_builtin()
    if "recorder" not in ALGORITHMS:
        ALGORITHMS.register("recorder")(Recorder)
        ALGORITHMS.register("budget")(Budget)
        AGGREGATORS.register("test_drop_largest")(DropLargest)


def test_a_server_plugin_stops_the_run_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = ["federation.algorithms=['budget']", "server.rounds=4"]
    assert (
        main(["run", str(TINY), *(a for s in sets for a in ("--set", s)), "--out", str(out)]) == 0
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[-1]["stopped"] == "budget: budget of 2 spent after 2 rounds"
    assert records[-1]["eval"], "the last round played is evaluated"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and (out / "final").is_dir()


def test_an_algorithm_from_outside_reads_its_own_config_section(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = ["federation.algorithms=['budget']", "server.rounds=4", "algorithm.budget.rounds=3"]
    assert (
        main(["run", str(TINY), *(a for s in sets for a in ("--set", s)), "--out", str(out)]) == 0
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["stopped"] == "budget: budget of 3 spent after 3 rounds"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("algorithm.budget.rounds=0", "algorithm.budget.rounds: Input should be greater than"),
        ("algorithm.budget.round=3", "algorithm.budget.round: Extra inputs are not permitted"),
        ("algorithm.budgte.rounds=3", "'budgte' is not a known algorithm"),
        ("algorithm.recorder.x=1", "algorithm 'recorder' takes no settings section"),
    ],
)
def test_a_bad_algorithm_section_is_refused_at_load(
    tmp_path: Path, capsys: Any, setting: str, message: str
) -> None:
    code = main(["run", str(TINY), "--set", setting, "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    if "budgte" in setting:
        assert "did you mean 'budget'" in err
    assert not (tmp_path / "run").exists()


def test_unknown_opt_in_algorithms_are_refused_at_load(tmp_path: Path, capsys: Any) -> None:
    code = main(
        ["run", str(TINY), "--set", "federation.algorithms=['nope']", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "federation.algorithms names ['nope']" in capsys.readouterr().err


def test_a_plugin_and_a_batch_aggregator_from_outside_the_core(tmp_path: Path) -> None:
    SENT.clear()
    out = tmp_path / "run"
    sets = [
        "federation.algorithms=['recorder']",
        "server.aggregator=test_drop_largest",
        "server.clients_per_round=3",
        "server.rounds=1",
        "run.checkpoint_every=1",
    ]
    assert (
        main(["run", str(TINY), *(a for s in sets for a in ("--set", s)), "--out", str(out)]) == 0
    )
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    sent = {cid: delta for (rnd, cid), delta in SENT.items() if rnd == 1}
    assert sorted(sent) == sorted(record["sampled"]) and len(sent) == 3
    # the plug-in's metric travelled with every update
    assert all(m["recorder/seen"] == 1.0 for m in record["client_metrics"].values())
    # the aggregator left out the largest update, and said so in the round's record
    norms = {c: sum(float(t.double().pow(2).sum()) for t in d.values()) for c, d in sent.items()}
    largest = max(norms, key=norms.__getitem__)
    assert record["excluded"] == [largest]
    # the global model moved by the example-weighted mean of the other two (FedAvg, lr 1)
    sizes = json.loads((out / "summary.json").read_text())["data"]["clients"]
    kept = [c for c in sent if c != largest]
    weights = {c: float(sizes[c]["train"]) for c in kept}
    start = prepare(load_config(TINY, sets)).initial
    final = load_file(sorted((out / "checkpoints").iterdir())[-1] / "global.safetensors")
    for name, tensor in final.items():
        mean = sum(sent[c][name].double() * weights[c] for c in kept) / sum(weights.values())
        moved = tensor.double() - start[name].double()
        torch.testing.assert_close(moved, mean, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("protocol", [("secagg.enabled=true",), ("he.enabled=true",)])
def test_a_batch_aggregator_is_refused_by_the_sum_only_protocols(
    protocol: tuple[str, ...],
) -> None:
    """Secure aggregation and CKKS reveal only the sum: a robust (batch) aggregator from
    outside the core is refused at config load, naming it and what would work."""
    from fedllm.config import ConfigError
    from tests.support.runs import tiny_config

    with pytest.raises(ConfigError, match="'test_drop_largest' needs every individual update"):
        tiny_config(
            *protocol,
            "server.aggregator='test_drop_largest'",
            "server.weighting='uniform'",
            "server.clients_per_round=4",
        )
