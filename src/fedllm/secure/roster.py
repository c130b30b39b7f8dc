"""The roster of a signed SecAgg+ deployment: client id -> its node's public key.

Where nodes hold authentication keys (``fedllm certs node``), the operator gives the
server and every node the same roster file (``secagg.roster``): a TOML table ``[clients]``
mapping each client id to the public key of the node that answers for it, an OpenSSH
line (``<name>.pub``) or a PEM block. A node signs its advertised keys with its own
private key; every party checks a client's keys against the roster's entry for it
(:func:`fedllm.secure.keys.verify_advertised`). ``fedllm certs roster OUT_FILE --client
NAME=PUBKEY_FILE ...`` writes it from the public keys the nodes sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tomllib
from cryptography.hazmat.primitives.asymmetric import ec

from fedllm.secure.keys import load_node_public_key

__all__ = ["load_roster", "parse_roster", "roster_toml"]

TABLE = "clients"


def roster_toml(public_keys: Mapping[str, bytes]) -> str:
    """The roster file's text for ``public_keys`` (client id -> OpenSSH line or PEM).

    Raises:
        ValueError: a key that is not an elliptic-curve public key.
    """
    lines = [
        "# fedllm SecAgg+ roster: client id = the authentication public key of the node",
        "# that answers for it. Give the same file to the server and every node",
        "# (secagg.roster).",
        f"[{TABLE}]",
    ]
    for client, key in sorted(public_keys.items()):
        load_node_public_key(key)  # refuse what the nodes could not read
        text = key.decode().strip()
        value = f'"""\n{text}\n"""' if "\n" in text else _quoted(text)
        lines.append(f"{_quoted(client)} = {value}")
    return "\n".join(lines) + "\n"


def parse_roster(text: str, source: str = "the roster") -> dict[str, ec.EllipticCurvePublicKey]:
    """Client id -> node public key, from a roster file's text.

    Raises:
        ValueError: not TOML, no ``[clients]`` table, or an entry that is not an
            elliptic-curve public key (the message names ``source`` and the client).
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{source} is not TOML: {error}") from None
    table = raw.get(TABLE)
    if not isinstance(table, dict) or not table:
        raise ValueError(
            f"{source} has no [{TABLE}] table of client id = node public key "
            "(`fedllm certs roster OUT_FILE --client NAME=PUBKEY_FILE ...` writes one from "
            "the public keys `fedllm certs node` made on each node)"
        )
    roster: dict[str, ec.EllipticCurvePublicKey] = {}
    for client, value in table.items():
        try:
            if not isinstance(value, str):
                raise ValueError("not a string")
            roster[client] = load_node_public_key(value.strip().encode())
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{source}: the key of client {client!r} is not an elliptic-curve public key "
                f"(an OpenSSH line or PEM): {error}"
            ) from None
    return roster


def load_roster(path: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    """The roster in the file at ``path``.

    Raises:
        OSError: the file cannot be read.
        ValueError: its content is not a roster (see :func:`parse_roster`).
    """
    return parse_roster(path.read_text(), str(path))


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
