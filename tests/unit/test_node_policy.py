"""A node's own rules over what the server's configuration makes it do
(``deploy/policy.py``): the files it reads, the privacy the run must have, how many
rounds and bytes it gives; a violation is a NodeRefusal naming the rule, before the
node reads or answers anything; bad rule values are refused at start."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from fedllm.config import dump_config
from fedllm.deploy import apps
from fedllm.deploy.apps import built_node
from fedllm.deploy.errors import NodeRefusal
from fedllm.deploy.link import NodeConfigError
from fedllm.deploy.policy import BYTES_FILE, NodePolicy, allowing, run_noise
from fedllm.message import ROUND, Message
from fedllm.protocol.engine import ClientHandler
from fedllm.wire import message_bytes
from tests.support.runs import tiny_config

NO_DP: tuple[str, ...] = ()
LOCAL = ("privacy.dp='local'", "privacy.clip_norm=1.0", "privacy.noise_multiplier=1.0")
CENTRAL = (
    "privacy.dp='central'",
    "privacy.clip_norm=0.1",
    "privacy.noise_multiplier=1.0",
    "server.weighting='uniform'",
)
SECAGG = ("secagg.enabled=true", "server.weighting='uniform'", "server.clients_per_round=3")
HE = ("he.enabled=true",)
MARKER = "zq-marker-4471"
"""Text of a file the server points a node at: it must never show in a refusal."""


def policy_of(**rules: str) -> NodePolicy:
    """The policy of a partition node whose config adds ``rules`` (``max_rounds`` is
    the node-config key ``max-rounds``)."""
    node = {"partition-id": "0", **{key.replace("_", "-"): v for key, v in rules.items()}}
    return NodePolicy.from_node_config(node)


def write_texts(path: Path, text: str, records: int = 24) -> Path:
    lines = [json.dumps({"text": f"{text} record {i}: " + "words " * 20}) for i in range(records)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node build that gets past its policy fails loudly: nothing may be loaded or
    read before the refusal."""

    def loud(*args: object, **kwargs: object) -> None:
        raise AssertionError("the node loaded or read something before refusing")

    monkeypatch.setattr(apps, "prepare", loud)
    monkeypatch.setattr("fedllm.data.sources.load_file", loud)


# ---------------------------------------------------------------- the node's own config


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("require-dp", "maybe", "choose one of local, central, any"),
        ("require-dp", "", "choose one of local, central, any"),
        ("max-rounds", "-1", "a whole number of at least 1"),
        ("max-rounds", "0", "a whole number of at least 1"),
        ("max-rounds", "2.5", "a whole number of at least 1"),
        ("max-bytes", "lots", "a whole number of at least 1"),
        ("min-noise-multiplier", "-0.5", "a number of at least 0"),
        ("min-noise-multiplier", "nan", "a number of at least 0"),
        ("require-secagg", "yes", "choose true or false"),
        ("public", "/srv/corpus.csv", r"not a \.jsonl or \.txt file"),
        ("corpus", " , ", "give the files it allows"),
        ("roster", "", "give a path"),
    ],
)
def test_a_bad_rule_value_is_refused_naming_the_valid_values(
    key: str, value: str, valid: str
) -> None:
    with pytest.raises(NodeConfigError, match=f"node {key} = .*{valid}"):
        NodePolicy.from_node_config({"partition-id": "0", key: value})


def test_a_bad_rule_value_stops_the_node_before_anything_loads(nothing_loads: None) -> None:
    with pytest.raises(NodeConfigError, match="require-dp = 'maybe'"):
        built_node(dump_config(tiny_config()), {"partition-id": "0", "require-dp": "maybe"})


def test_rule_values_as_flower_passes_them_are_read(tmp_path: Path) -> None:
    """Flower parses ``--node-config`` values as TOML and the ClientApp passes them on as
    text: ``require-secagg=true`` arrives as 'True', ``max-rounds=5`` as '5'."""
    policy = policy_of(
        require_dp="local",
        min_noise_multiplier="1",
        require_secagg="True",
        max_rounds="5",
        max_bytes="1000000",
        public=f"{tmp_path}/a.jsonl, {tmp_path}/b.txt",
        roster=f"{tmp_path}/../{tmp_path.name}/roster.toml",
    )
    assert policy.require_dp == "local" and policy.min_noise_multiplier == 1.0
    assert policy.require_secagg and policy.max_rounds == 5 and policy.max_bytes == 1_000_000
    assert policy.public == (tmp_path.resolve() / "a.jsonl", tmp_path.resolve() / "b.txt")
    assert policy.roster == tmp_path.resolve() / "roster.toml"
    assert NodePolicy.from_node_config({"partition-id": "0"}) == NodePolicy()


# ---------------------------------------------------------------- the run's privacy


@pytest.mark.parametrize(
    ("rules", "run", "refusal"),
    [
        ({"require_dp": "local"}, NO_DP, "require-dp = local, but the run has privacy.dp = 'none'"),
        ({"require_dp": "local"}, LOCAL, None),
        ({"require_dp": "local"}, CENTRAL, "require-dp = local, but .* privacy.dp = 'central'"),
        ({"require_dp": "central"}, CENTRAL, None),
        ({"require_dp": "central"}, LOCAL, "require-dp = central, but .* 'local'"),
        ({"require_dp": "any"}, LOCAL, None),
        ({"require_dp": "any"}, CENTRAL, None),
        ({"require_dp": "any"}, NO_DP, "require-dp = any, but the run has privacy.dp = 'none'"),
        ({"require_secagg": "true"}, NO_DP, "require-secagg = true, but .*secagg.enabled = false"),
        ({"require_secagg": "true"}, SECAGG, None),
        ({"require_secagg": "true"}, HE, None),
        ({"require_secagg": "false"}, NO_DP, None),
        ({"min_noise_multiplier": "1.0"}, NO_DP, "min-noise-multiplier = 1.0, but .*'none'"),
        ({"min_noise_multiplier": "1.0"}, LOCAL, None),
        ({"min_noise_multiplier": "1.0"}, CENTRAL, None),
        (
            {"min_noise_multiplier": "1.5"},
            LOCAL,
            r"min-noise-multiplier = 1.5, but its DP-SGD noise multiplier on this node is 1 "
            r"\(privacy.noise_multiplier = 1.0\)",
        ),
        (
            {"min_noise_multiplier": "1.5"},
            CENTRAL,
            "min-noise-multiplier = 1.5, but the noise multiplier it asks the server to add is 1",
        ),
        ({}, NO_DP, None),
    ],
)
def test_the_run_must_have_the_privacy_the_node_requires(
    rules: dict[str, str], run: tuple[str, ...], refusal: str | None
) -> None:
    policy, config = policy_of(**rules), tiny_config(*run)
    if refusal is None:
        policy.check_run(config)
        return
    with pytest.raises(NodeRefusal, match=f"^node policy: {refusal}"):
        policy.check_run(config)


@pytest.mark.parametrize(
    ("rule", "run"),
    [
        ({"require-dp": "local"}, CENTRAL),
        ({"min-noise-multiplier": "2"}, LOCAL),
        ({"require-secagg": "true"}, LOCAL),
    ],
)
def test_a_run_without_the_required_privacy_is_refused_before_the_node_loads(
    rule: dict[str, str], run: tuple[str, ...], nothing_loads: None, tmp_path: Path
) -> None:
    node = {"partition-id": "0", "state-dir": str(tmp_path), **rule}
    with pytest.raises(NodeRefusal, match=f"node policy: {next(iter(rule))} = "):
        built_node(dump_config(tiny_config(*run)), node)


def test_a_derived_local_noise_is_the_nodes_own_and_is_checked() -> None:
    """Without privacy.noise_multiplier the node derives its DP-SGD noise from the budget
    and its own examples, as its DP-SGD does; the check waits for it."""
    config = tiny_config("privacy.dp='local'", "privacy.clip_norm=1.0", "privacy.target_epsilon=8")
    noise = run_noise(config, "a-client", 32)
    assert noise is not None and 0 < noise < 5
    policy = policy_of(min_noise_multiplier=f"{noise * 1.01}")
    policy.check_run(config)  # not known before the node's data is counted
    with pytest.raises(NodeRefusal, match="derived from privacy.target_epsilon = 8"):
        policy.check_run(config, noise)
    policy_of(min_noise_multiplier=f"{noise}").check_run(config, noise)
    assert run_noise(tiny_config(), "a-client", 32) is None


# ---------------------------------------------------------------- the files a node reads


def test_a_public_file_outside_the_allow_list_is_refused_before_it_is_read(
    tmp_path: Path, nothing_loads: None, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "public").mkdir()
    secret = write_texts(tmp_path / "etc" / "some.jsonl", MARKER)
    allowed = write_texts(tmp_path / "public" / "wiki.jsonl", "public")
    text = dump_config(tiny_config(f"public.source='{secret}'"))
    node = {"partition-id": "0", "state-dir": str(tmp_path / "s"), "public": str(allowed)}
    with caplog.at_level(logging.INFO), pytest.raises(NodeRefusal) as refused:
        built_node(text, node)
    message = str(refused.value)
    assert message.startswith("node policy: public.source is a file this node may not read")
    assert "public='/path/a.jsonl,/path/b.txt'" in message and str(secret) in message
    assert MARKER not in message and str(allowed) not in message  # nor the node's own paths
    assert len(message) < 300  # what reaches the server is cut there
    assert str(secret) in caplog.text and str(allowed) in caplog.text  # the detail: node's log
    assert MARKER not in caplog.text
    # the same file, listed, is read as the server asked; a path around it is the same file
    listed = NodePolicy.from_node_config({"partition-id": "0", "public": f"{allowed},{secret}"})
    sideways = f"{tmp_path}/public/../etc/some.jsonl"
    assert listed.node_run_config(tiny_config(f"public.source='{sideways}'")).public.source
    with pytest.raises(NodeRefusal, match="public.source"):
        NodePolicy().node_run_config(tiny_config(f"public.source='{sideways}'"))


def test_a_partition_nodes_corpus_file_must_be_listed_in_corpus(tmp_path: Path) -> None:
    corpus = write_texts(tmp_path / "corpus.jsonl", MARKER)
    config = tiny_config(f"data.source='{corpus}'")
    with pytest.raises(NodeRefusal, match="data.source is a file .* corpus='/path/a.jsonl"):
        policy_of().node_run_config(config)
    with pytest.raises(NodeRefusal, match="data.source"):  # node_data refuses it too
        apps.node_data(config, None, {"partition-id": "0"})
    assert policy_of(corpus=str(corpus)).node_run_config(config) is config
    # a node with its own file never reads data.source: nothing to allow
    own = NodePolicy.from_node_config({"data": str(tmp_path / "own.jsonl")})
    assert own.node_run_config(config) is config


def test_shipped_corpora_presets_and_hub_ids_name_no_file_of_the_node() -> None:
    for run in (
        ("public.source='pydoc'",),
        ("model.name='smollm2-135m'",),
        ("model.name='HuggingFaceTB/SmolLM2-360M-Instruct'",),
    ):
        config = tiny_config(*run)
        assert NodePolicy().node_run_config(config) is config


@pytest.mark.parametrize(
    ("setting", "node_key", "run"),
    [
        (
            "secagg.roster",
            "roster",
            (*SECAGG, "runtime.engine='flower'", "secagg.roster='/srv/server/roster.toml'"),
        ),
        (
            "he.secret_context",
            "he-secret-context",
            (
                *HE,
                "runtime.engine='flower'",
                "he.secret_context='/srv/server/he-secret.ctx'",
                "he.public_context='/srv/server/he-public.ctx'",
            ),
        ),
        ("model.name", "model", ("model.name='/srv/server/models/llama'",)),
    ],
)
def test_the_nodes_own_file_replaces_the_servers(
    setting: str, node_key: str, run: tuple[str, ...], tmp_path: Path
) -> None:
    config = tiny_config(*run)
    section, key = setting.split(".")
    with pytest.raises(NodeRefusal, match=f"{setting} names a file.* {node_key}='/path/"):
        policy_of().node_run_config(config)
    own = tmp_path / "mine"
    effective = NodePolicy.from_node_config({"partition-id": "0", node_key: str(own)})
    node_config = effective.node_run_config(config)
    assert getattr(getattr(node_config, section), key) == str(own.resolve())
    assert node_config.server == config.server and config.model_copy() is not node_config
    assert getattr(getattr(config, section), key).startswith("/srv/server")  # not changed


def test_a_model_directory_on_the_node_is_a_path_even_when_it_looks_like_a_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # 'org/model' now names a local directory
    with pytest.raises(NodeRefusal, match="model.name names a file"):
        NodePolicy().node_run_config(tiny_config("model.name='org/model'"))


# ---------------------------------------------------------------- every message


def replying(calls: list[int]) -> ClientHandler:
    """A client side that records the rounds it answers and replies 400 bytes of zeros."""

    def handle(client: str, phase: str, message: Message) -> Message:
        calls.append(message.round)
        return Message(arrays={"x": torch.zeros(100)}, config={ROUND: message.round})

    return handle


def at_round(n: int) -> Message:
    return Message(config={ROUND: n})


def test_max_rounds_refuses_the_first_message_past_it(tmp_path: Path) -> None:
    calls: list[int] = []
    handler = policy_of(max_rounds="3").guard(replying(calls), tiny_config(), None, tmp_path)
    for n in (0, 1, 2, 3):
        assert handler("c", "train", at_round(n)).config[ROUND] == n
    with pytest.raises(
        NodeRefusal, match="^node policy: max-rounds = 3, the server asked for round 4$"
    ):
        handler("c", "train", at_round(4))
    assert calls == [0, 1, 2, 3]  # the refused one never reached the client side


def test_max_bytes_refuses_the_reply_that_crosses_it_and_survives_a_new_worker(
    tmp_path: Path,
) -> None:
    size = message_bytes(replying([])("c", "train", at_round(1)))
    policy = policy_of(max_bytes=str(3 * size - 1))
    handler = policy.guard(replying([]), tiny_config(), None, tmp_path)
    handler("c", "train", at_round(1))
    handler("c", "evaluate", at_round(1))
    with pytest.raises(NodeRefusal, match=f"max-bytes = {3 * size - 1}, and this reply"):
        handler("c", "train", at_round(2))
    counted = tmp_path / BYTES_FILE
    assert counted.read_text() == str(2 * size)  # the refused reply is not counted
    assert counted.stat().st_mode & 0o777 == 0o600
    again = policy.guard(replying([]), tiny_config(), None, tmp_path)  # a restarted worker
    with pytest.raises(NodeRefusal, match="max-bytes"):
        again("c", "train", at_round(2))
    exact = policy_of(max_bytes=str(3 * size)).guard(replying([]), tiny_config(), None, tmp_path)
    exact("c", "train", at_round(2))  # up to the limit itself is allowed
    assert counted.read_text() == str(3 * size)
    fresh = policy.guard(replying([]), tiny_config(), None, tmp_path / "other-run")
    fresh("c", "train", at_round(1))


def test_every_message_checks_the_run_again(tmp_path: Path) -> None:
    calls: list[int] = []
    handler = policy_of(require_dp="any").guard(replying(calls), tiny_config(), None, tmp_path)
    with pytest.raises(NodeRefusal, match="require-dp = any"):
        handler("c", "train", at_round(1))
    strict = policy_of(min_noise_multiplier="2").guard(
        replying(calls), tiny_config(*LOCAL), 3.0, tmp_path
    )
    strict("c", "train", at_round(1))  # the node's own noise, passed at build, is enough
    assert calls == [1]


def test_a_built_node_checks_its_run_and_every_message(tmp_path: Path) -> None:
    """The whole build on the tiny model: the allowed public file is read, the derived
    local noise passes the node's minimum, and the client side it returns refuses a
    round past max-rounds before answering."""
    public = write_texts(tmp_path / "public.jsonl", "public")
    run = (
        "privacy.dp='local'",
        "privacy.clip_norm=1.0",
        "privacy.target_epsilon=8",
        f"public.source='{public}'",
    )
    node = {
        "partition-id": "0",
        "state-dir": str(tmp_path / "state"),
        "public": str(public),
        "require-dp": "local",
        "min-noise-multiplier": "0.1",
        "max-rounds": "1",
    }
    _client, train, handler = built_node(dump_config(tiny_config(*run)), node)
    assert train > 0
    with pytest.raises(NodeRefusal, match="max-rounds = 1, the server asked for round 2"):
        handler("c", "train", at_round(2))
    with pytest.raises(ValueError, match="no client handler for phase 'nothing'"):
        handler("c", "nothing", at_round(1))  # past the policy, the client side answers


def test_a_deployment_owning_every_node_allows_every_file_its_config_names(
    tmp_path: Path,
) -> None:
    """``allowing(config)``: what the loopback deployment adds to its own nodes' configs."""
    corpus, public, model = tmp_path / "corpus.jsonl", tmp_path / "public.txt", tmp_path / "m"
    model.mkdir()
    config = tiny_config(
        f"data.source='{corpus}'",
        f"public.source='{public}'",
        f"model.name='{model}'",
        *SECAGG,
        "runtime.engine='flower'",
        f"secagg.roster='{tmp_path / 'roster.toml'}'",
    )
    entries = allowing(config)
    assert set(entries) == {"corpus", "public", "model", "roster"}
    policy = NodePolicy.from_node_config({"partition-id": "0", **entries})
    assert policy.node_run_config(config) == config
    assert allowing(tiny_config()) == {}


def test_a_bad_policy_value_is_refused_by_the_client_app_before_a_worker_starts(
    tmp_path: Path,
) -> None:
    """The ClientApp checks the node's policy values itself (no worker, no torch): the
    server reads only the category, the node's clientapp.log the value and the fix."""
    from fedllm.deploy.link import CONFIG_REFUSED, WorkerError
    from fedllm.deploy.node_app import forward, node_spec, reported

    node = {"partition-id": 0, "state-dir": str(tmp_path), "max-rounds": "-1"}
    with pytest.raises(NodeConfigError, match="max-rounds"):
        node_spec(node, {"config": ""})
    with pytest.raises(WorkerError, match=f"^{CONFIG_REFUSED}$"):
        reported(forward)(node, {"config": ""}, "train", b"")
    assert "max-rounds" in (tmp_path / "clientapp.log").read_text()
    assert not list(tmp_path.glob("worker-*.json"))  # no worker was started
