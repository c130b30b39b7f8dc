"""The attacker's own budget (``attack.local_steps``, ``attack.lr``) in whole runs on the
tiny config: the malicious client trains exactly as a client whose recipe had those
steps and that learning rate would, every honest client exactly as the recipe says;
before ``attack.from_round`` the malicious client keeps the recipe's budget too. The
config refuses a budget with no attack or no malicious client."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedllm.cli import main
from fedllm.client.plugin import ClientContext, ClientPlugin
from fedllm.config import ConfigError
from fedllm.types import ClientUpdate, Params
from tests.support.plugins import register_client_plugin
from tests.support.processes import python_stdout
from tests.support.runs import TINY, tiny_config

SENT: dict[tuple[str, int, str], tuple[Params, dict[str, float]]] = {}
"""(run, round, client) -> the delta the client sent and its training metrics."""

RUN = {"label": ""}

ATTACKER = "emotion"
HONEST = ["coding", "tech_support", "trivia"]
BASE = [
    "server.clients_per_round=4",
    "run.checkpoint_every=1",
    "attack.update=sign_flip",
    f"attack.clients=['{ATTACKER}']",
]


class Sent(ClientPlugin):
    """Runs after every attack plug-in (order 100): what each client sends."""

    name = "budget_recorder"

    def after_train(self, ctx: ClientContext, update: ClientUpdate) -> ClientUpdate:
        delta = {k: v.clone() for k, v in update.delta.items()}
        SENT[(RUN["label"], ctx.round, ctx.client_id)] = (delta, dict(update.metrics))
        return update


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    register_client_plugin("budget_recorder", Sent, order=100)


def run(tmp_path: Path, label: str, *sets: str) -> dict[tuple[int, str], tuple[Params, dict]]:
    RUN["label"] = label
    sets = (*BASE, "federation.algorithms=['budget_recorder']", *sets)
    args = [a for s in sets for a in ("--set", s)]
    assert main(["run", str(TINY), *args, "--out", str(tmp_path / label)]) == 0
    return {(r, c): v for (run_, r, c), v in SENT.items() if run_ == label}


def same(a: Params, b: Params) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_malicious_client_trains_with_its_own_steps_and_rate_the_others_with_the_recipe(
    tmp_path: Path,
) -> None:
    SENT.clear()
    recipe = run(tmp_path, "recipe", "server.rounds=1")  # 3 steps at 5e-3
    everyone = run(
        tmp_path, "everyone", "server.rounds=1", "client.local_steps=7", "client.lr=2e-2"
    )
    budget = run(tmp_path, "budget", "server.rounds=1", "attack.local_steps=7", "attack.lr=2e-2")
    assert same(budget[(1, ATTACKER)][0], everyone[(1, ATTACKER)][0])
    assert not same(budget[(1, ATTACKER)][0], recipe[(1, ATTACKER)][0])
    for client in HONEST:
        assert same(budget[(1, client)][0], recipe[(1, client)][0]), client
    metrics = budget[(1, ATTACKER)][1]
    assert metrics["steps"] == 7.0
    assert metrics["lr_sum"] == pytest.approx(7 * 2e-2)
    assert budget[(1, "coding")][1]["steps"] == 3.0


def test_before_from_round_the_malicious_client_keeps_the_recipe_budget(tmp_path: Path) -> None:
    SENT.clear()
    sets = ("server.rounds=2", "attack.from_round=2")
    budget = run(tmp_path, "late", *sets, "attack.local_steps=6", "attack.lr=1e-2")
    assert budget[(1, ATTACKER)][1]["steps"] == 3.0
    assert budget[(1, ATTACKER)][1]["lr_sum"] == pytest.approx(3 * 5e-3)
    assert budget[(2, ATTACKER)][1]["steps"] == 6.0
    assert budget[(2, ATTACKER)][1]["lr_sum"] == pytest.approx(6 * 1e-2)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["attack.local_steps=5"], "no attack is set"),
        (
            ["attack.lr=1e-2", "attack.data=backdoor", "attack.placement=everywhere"],
            "there are none",
        ),
        (["attack.local_steps=0"], "attack.local_steps"),
        (["attack.lr=0"], "attack.lr"),
    ],
)
def test_a_budget_without_an_attacker_is_refused(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(*sets)


ATTACKING = ["attack.update=sign_flip", f"attack.clients=['{ATTACKER}']", "attack.local_steps=5"]
RUN_LONG = ["client.lr_schedule_span=run", "client.lr_schedule=cosine"]


@pytest.mark.parametrize(
    ("sets", "other"),
    [
        (["privacy.dp=local", "privacy.noise_multiplier=1.0", "privacy.clip_norm=1.0"], "dp"),
        (["server.normalize=fednova_steps"], "server.normalize"),
        ([*RUN_LONG, "attack.from_round=2"], "lr_schedule_span"),
    ],
)
def test_a_budget_is_refused_where_the_run_would_miscount_it(sets: list[str], other: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"attack.local_steps = 5 cannot be combined with .*{other}"
    ):
        tiny_config(*ATTACKING, *sets)


def test_a_run_long_schedule_takes_a_budget_from_the_first_round() -> None:
    assert tiny_config(*ATTACKING, *RUN_LONG).attack.local_steps == 5


def test_checking_a_config_with_a_budget_imports_no_torch() -> None:
    probe = (
        "import sys\n"
        "from fedllm.config import load_config\n"
        "load_config(sys.argv[1], ['attack.update=sign_flip', 'attack.fraction=0.5',"
        " 'attack.local_steps=9', 'attack.lr=1e-2'])\n"
        "print('torch' in sys.modules)\n"
    )
    assert python_stdout(probe, str(TINY)).split() == ["False"]
