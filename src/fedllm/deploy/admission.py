"""Who may join a run: the ServerApp admits only the federation's own nodes.

Before the first round the ServerApp asks every connected node who it is, with a
fresh random challenge per node. A node answers with its client id and training-set
size and, when its node config names its authentication key (``auth-key``), an
ECDSA signature over the challenge, its Flower node id, its client id and size
(:func:`identity_message`). With ``runtime.roster`` the server admits a node only as
a member of the roster whose key verifies that signature; with ``runtime.clients``
only the listed names (unproven); with neither, every node that answers, up to the
expected number. Any other answer is refused and reported (``admission.json`` in
the run directory, and the ServerApp's log); two admissible answers for one client
stop the run, since the server could not tell which node is the real one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedllm.secure.keys import load_node_key

DOMAIN = b"fedllm node identity v1\x00"
"""Prefix of every signed identity: a signature made for SecAgg+ never passes as one."""

ADMISSION_FILE = "admission.json"
"""The run directory's record of the nodes admitted and refused."""


class AdmissionError(RuntimeError):
    """The nodes that answered cannot make the federation (too few members, or two
    nodes admissible as the same client)."""


def identity_message(challenge: bytes, node: int, client: str, train: int) -> bytes:
    """The bytes a node signs to say who it is: each field length-prefixed, so no two
    different identities share a message."""
    parts = [challenge, str(node).encode(), client.encode(), str(train).encode()]
    return DOMAIN + b"".join(struct.pack(">I", len(part)) + part for part in parts)


def sign_identity(key_file: Path, challenge: bytes, node: int, client: str, train: int) -> bytes:
    """The node's signature (ECDSA, SHA-384, DER) of its identity, with its auth-key.

    Raises:
        ValueError: the key file is not an unencrypted elliptic-curve private key.
        OSError: it cannot be read.
    """
    key = load_node_key(key_file.read_bytes())
    return key.sign(identity_message(challenge, node, client, train), ec.ECDSA(hashes.SHA384()))


@dataclass(frozen=True)
class NodeAnswer:
    """One node's answer to the identity question.

    Attributes:
        node: its Flower node id (where the answer came from).
        client: the client id it claims.
        train: its training examples (as it says).
        challenge: the challenge sent to it.
        signature: its signature of the identity; empty if it has no auth-key.
    """

    node: int
    client: str
    train: int
    challenge: bytes
    signature: bytes = b""


@dataclass(frozen=True)
class Members:
    """The federation's members: client ids, and (from a roster) each one's node key.

    Attributes:
        names: the client ids admitted.
        keys: client id -> node public key; empty: names only, nothing proven.
    """

    names: frozenset[str]
    keys: Mapping[str, ec.EllipticCurvePublicKey] = field(default_factory=dict)

    @classmethod
    def from_roster(cls, roster: Mapping[str, ec.EllipticCurvePublicKey]) -> Members:
        return cls(frozenset(roster), dict(roster))

    @classmethod
    def named(cls, names: Sequence[str]) -> Members:
        return cls(frozenset(names))


@dataclass(frozen=True)
class Refused:
    """A node not admitted, and why (sent to no one but the operator)."""

    node: int
    client: str
    reason: str


@dataclass(frozen=True)
class Admission:
    """The outcome: client id -> (node id, training examples) admitted; the refused."""

    admitted: dict[str, tuple[int, int]]
    refused: list[Refused]

    def record(self) -> dict[str, object]:
        """What ``admission.json`` holds."""
        return {
            "admitted": {client: node for client, (node, _) in sorted(self.admitted.items())},
            "refused": [asdict(r) for r in self.refused],
        }

    def write(self, folder: Path) -> Path:
        """Write ``admission.json`` into ``folder``; its path."""
        path = folder / ADMISSION_FILE
        path.write_text(json.dumps(self.record(), indent=1) + "\n")
        return path


def why_not(answer: NodeAnswer, members: Members | None) -> str | None:
    """Why ``answer`` is not admissible; None when it is."""
    if members is None:
        return None
    if answer.client not in members.names:
        return f"client {answer.client!r} is not a member of the federation"
    if not members.keys:
        return None
    key = members.keys[answer.client]
    if not answer.signature:
        return f"no signature (the node answering as {answer.client!r} has no auth-key)"
    message = identity_message(answer.challenge, answer.node, answer.client, answer.train)
    try:
        key.verify(answer.signature, message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return f"its signature does not verify against the roster's key for {answer.client!r}"
    return None


def admit(
    answers: Sequence[NodeAnswer],
    members: Members | None,
    expected: int,
    malformed: Sequence[Refused] = (),
) -> Admission:
    """The nodes admitted among ``answers`` and the ones refused.

    Args:
        members: the federation's members; None: every answer, up to ``expected``.
        expected: how many clients the federation needs.
        malformed: answers already refused (unreadable), reported with the others.

    Raises:
        AdmissionError: two admissible answers for one client; without members, more
            answers than ``expected``; or fewer than ``expected`` admitted.
    """
    admitted: dict[str, tuple[int, int]] = {}
    refused = list(malformed)
    for answer in sorted(answers, key=lambda a: a.node):
        reason = why_not(answer, members)
        if reason is not None:
            refused.append(Refused(answer.node, answer.client, reason))
            continue
        if answer.client in admitted:
            raise AdmissionError(
                f"nodes {admitted[answer.client][0]} and {answer.node} both answer for client "
                f"{answer.client!r}: the server cannot tell which is the federation's; give "
                "each node its own partition-id or client= name"
                + ("" if members and members.keys else ", and runtime.roster to prove it")
            )
        admitted[answer.client] = (answer.node, answer.train)
    if members is None and len(admitted) > expected:
        raise AdmissionError(
            f"{len(admitted)} nodes answered ({', '.join(sorted(admitted))}) but the "
            f"federation has {expected}: some node that is not the federation's joined; "
            "name the members with runtime.roster (or runtime.clients)"
        )
    if len(admitted) < expected:
        refusals = "".join(f"\n  node {r.node} ({r.client!r}): {r.reason}" for r in refused)
        raise AdmissionError(
            f"{len(admitted)} of {expected} clients answered and were admitted"
            + (f"; refused:{refusals}" if refused else "")
        )
    return Admission(admitted, refused)
