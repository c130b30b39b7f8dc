"""Only the federation's own nodes join: the identity challenge, signed and checked.

A node signs a fresh per-node challenge, its Flower node id, its client id and size
with its auth-key; the server admits a roster member only when the roster's key
verifies that signature. The rogue nodes of the security review (an outsider's node
answering as 'rogue', one claiming a member's name with its own key, one replaying a
member's signature) are refused and reported, in process through the real ClientApp
query and Flower's protobuf.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, Message, RecordDict

import fedllm.deploy.node_app as node_app
from fedllm.config import ConfigError
from fedllm.deploy.admission import (
    DOMAIN,
    AdmissionError,
    Members,
    NodeAnswer,
    admit,
    identity_message,
    sign_identity,
)
from fedllm.deploy.apps import admitted_nodes, federation_members
from fedllm.deploy.certs import make_node_key, write_roster
from fedllm.runtime.flower.apps import node_identities
from fedllm.runtime.flower.light import make_forwarding_client_app
from fedllm.secure.keys import load_node_key
from fedllm.secure.roster import load_roster
from tests.support.flower import InProcessGrid
from tests.support.runs import tiny_config

CHALLENGE = bytes(range(32))


def _keys(tmp_path: Path, *names: str) -> dict[str, Path]:
    return {name: make_node_key(tmp_path / name, name).private for name in names}


def _roster(tmp_path: Path, *names: str) -> Members:
    pubs = {name: make_node_key(tmp_path / name, name).public for name in names}
    write_roster(tmp_path / "roster.toml", pubs)
    return Members.from_roster(load_roster(tmp_path / "roster.toml"))


def _signed(key: Path, node: int, client: str, train: int = 10) -> NodeAnswer:
    signature = sign_identity(key, CHALLENGE, node, client, train)
    return NodeAnswer(node, client, train, CHALLENGE, signature)


def test_the_signed_message_is_the_documented_length_prefixed_fields() -> None:
    fields = [CHALLENGE, b"7", b"org-a", b"12"]
    by_hand = DOMAIN + b"".join(struct.pack(">I", len(f)) + f for f in fields)
    assert identity_message(CHALLENGE, 7, "org-a", 12) == by_hand
    # no two identities share a message: the boundary between fields is in it
    assert identity_message(CHALLENGE, 7, "org-a1", 2) != identity_message(
        CHALLENGE, 7, "org-a", 12
    )


def test_a_node_signature_verifies_with_its_public_key_independently(tmp_path: Path) -> None:
    files = make_node_key(tmp_path, "org-a")
    answer = _signed(files.private, 3, "org-a")
    public = load_node_key(files.private.read_bytes()).public_key()
    public.verify(  # cryptography directly, over the message built by hand
        answer.signature,
        DOMAIN
        + b"".join(struct.pack(">I", len(f)) + f for f in [CHALLENGE, b"3", b"org-a", b"10"]),
        ec.ECDSA(hashes.SHA384()),
    )


def test_only_roster_members_proving_their_keys_are_admitted(tmp_path: Path) -> None:
    members = _roster(tmp_path / "members", "org-a", "org-b")
    keys = {name: tmp_path / "members" / name / f"{name}.key" for name in ("org-a", "org-b")}
    rogue_key = _keys(tmp_path / "outsider", "rogue")["rogue"]
    legit_a, legit_b = _signed(keys["org-a"], 1, "org-a"), _signed(keys["org-b"], 2, "org-b")
    answers = [
        legit_a,
        legit_b,
        _signed(rogue_key, 3, "rogue"),  # an outsider's own name
        _signed(rogue_key, 4, "org-a"),  # a member's name, the outsider's key
        NodeAnswer(5, "org-b", 10, CHALLENGE, legit_b.signature),  # replayed from node 2
        NodeAnswer(6, "org-a", 10, bytes(32), legit_a.signature),  # another challenge
        NodeAnswer(7, "org-a", 999, CHALLENGE, legit_a.signature),  # a size of its own
        NodeAnswer(8, "org-b", 10, CHALLENGE),  # no auth-key
    ]
    admission = admit(answers, members, expected=2)
    assert admission.admitted == {"org-a": (1, 10), "org-b": (2, 10)}
    reasons = {r.node: r.reason for r in admission.refused}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8]
    assert "not a member" in reasons[3]
    assert all("does not verify" in reasons[n] for n in (4, 5, 6, 7))
    assert "no signature" in reasons[8]
    assert admission.record()["admitted"] == {"org-a": 1, "org-b": 2}


def test_names_without_keys_admit_by_name_and_refuse_the_rest() -> None:
    answers = [NodeAnswer(1, "org-a", 5, CHALLENGE), NodeAnswer(2, "rogue", 5, CHALLENGE)]
    admission = admit(answers, Members.named(["org-a"]), expected=1)
    assert list(admission.admitted) == ["org-a"]
    assert [(r.node, r.client) for r in admission.refused] == [(2, "rogue")]


def test_what_cannot_make_the_federation_stops_the_run(tmp_path: Path) -> None:
    two_claims = [NodeAnswer(1, "org-a", 5, CHALLENGE), NodeAnswer(2, "org-a", 5, CHALLENGE)]
    with pytest.raises(AdmissionError, match=r"nodes 1 and 2 both answer for client 'org-a'"):
        admit(two_claims, Members.named(["org-a"]), expected=1)
    extra = [NodeAnswer(n, f"client-{n}", 5, CHALLENGE) for n in range(3)]
    with pytest.raises(AdmissionError, match=r"3 nodes answered .* the federation has 2"):
        admit(extra, None, expected=2)
    assert len(admit(extra, None, expected=3).admitted) == 3
    members = _roster(tmp_path, "org-a", "org-b")
    with pytest.raises(AdmissionError, match=r"(?s)1 of 2 clients .*node 2 \('org-b'\): no sig"):
        admit(
            [
                _signed(tmp_path / "org-a" / "org-a.key", 1, "org-a"),
                NodeAnswer(2, "org-b", 5, CHALLENGE),
            ],
            members,
            expected=2,
        )


def _node(identity: dict[str, object]) -> object:
    """A node of the in-process grid answering the query through the real ClientApp."""
    app = make_forwarding_client_app(node_app.node_identity, node_app.forward)
    config = {k: v for k, v in identity.items() if k != "node"}

    def answer(message: Message) -> Message:
        node = message.metadata.dst_node_id
        context = Context(1, node, config, RecordDict(), {"config": ""})  # type: ignore[arg-type]
        return app(message, context)

    return answer


def test_the_client_app_signs_and_the_server_admits_over_flowers_protobuf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = _roster(tmp_path / "keys", "org-a", "org-b")
    rogue = _keys(tmp_path / "outsider", "rogue")["rogue"]
    nodes = {
        11: {"client": "org-a", "auth-key": str(tmp_path / "keys/org-a/org-a.key")},
        12: {"client": "org-b", "auth-key": str(tmp_path / "keys/org-b/org-b.key")},
        13: {"client": "rogue", "auth-key": str(rogue)},
        14: {"client": "org-a", "auth-key": str(rogue)},
    }
    monkeypatch.setattr(node_app, "node_spec", lambda node, run: node)
    monkeypatch.setattr(node_app, "identify", lambda node: (node["client"], 7))
    grid = InProcessGrid({n: _node(c) for n, c in nodes.items()})  # type: ignore[misc]
    answers = node_identities(grid, expected=2, timeout_s=5)  # type: ignore[arg-type]
    assert len({challenge for _, challenge, _ in answers}) == 4  # one fresh challenge each
    admission = admitted_nodes(answers, members, expected=2)
    assert admission.admitted == {"org-a": (11, 7), "org-b": (12, 7)}
    assert sorted(r.node for r in admission.refused) == [13, 14]
    written = admission.write(tmp_path)
    assert '"rogue"' in written.read_text()


def test_a_malformed_answer_is_refused_not_trusted() -> None:
    answers = [(1, CHALLENGE, {"client": "org-a", "train": "many"}), (2, CHALLENGE, {"train": 3})]
    failed = (4, CHALLENGE, {"error": "data error on the node"})
    admission = admitted_nodes(
        [*answers, (3, CHALLENGE, {"client": "org-b", "train": 4}), failed], None, expected=1
    )
    assert list(admission.admitted) == ["org-b"]
    assert sorted(r.node for r in admission.refused) == [1, 2, 4]
    assert admission.refused[-1].reason == "it answered with an error: data error on the node"


def test_members_come_from_the_roster_or_the_names(tmp_path: Path) -> None:
    flower = ("runtime.engine='flower'", "data.num_clients=2")
    assert federation_members(tiny_config(*flower)) is None
    named = federation_members(tiny_config(*flower, "runtime.clients=['org-a', 'org-b']"))
    assert named == Members.named(["org-a", "org-b"])
    _roster(tmp_path, "org-a", "org-b")
    roster = federation_members(tiny_config(*flower, f"runtime.roster='{tmp_path}/roster.toml'"))
    assert roster is not None and roster.names == {"org-a", "org-b"} and roster.keys
    with pytest.raises(ConfigError, match=r"runtime.roster = .*nowhere"):
        federation_members(tiny_config(*flower, f"runtime.roster='{tmp_path}/nowhere.toml'"))
