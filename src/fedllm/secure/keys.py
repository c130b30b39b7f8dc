"""Key agreement and authenticated encryption between two clients.

Each client holds X25519 key pairs; a pair of clients derives a shared 32-byte key
by Diffie-Hellman followed by HKDF-SHA256 with a context label (what the key is for,
the round, and the two client ids in sorted order, so both ends derive the same key
and no two uses share one). Share messages are sealed with ChaCha20-Poly1305 whose
associated data binds the sender, the recipient and the round: a ciphertext the
server redirects to another recipient, or replays in another round, fails to open.

Without more, the public keys are not authenticated: the semi-honest (honest-but-
curious server) variant of SecAgg+. Where nodes hold long-term authentication keys
(``fedllm deploy certs``: EC P-384, OpenSSH format), a client signs the keys it
advertises, bound to its id and the round (:func:`sign_advertised`), and every other
client verifies them against the roster of node public keys (:func:`verify_advertised`)
before deriving any pairwise secret: a server that substitutes keys is caught.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedllm.secure.errors import AuthenticationError, SecAggViolation
from fedllm.secure.randomness import Randomness, SeededRandomness, SystemRandomness

__all__ = [
    "KEY_BYTES",
    "KeyPair",
    "Randomness",
    "Roster",
    "SeededRandomness",
    "SystemRandomness",
    "agree",
    "check_public_key",
    "context_label",
    "generate_key_pair",
    "load_key_pair",
    "load_node_key",
    "load_node_public_key",
    "open_sealed",
    "seal",
    "sign_advertised",
    "verify_advertised",
]

Roster = Mapping[str, ec.EllipticCurvePublicKey]
"""Client id -> the public authentication key of the node that answers for it."""

KEY_BYTES = 32
"""A raw X25519 key, public or private, and a derived symmetric key."""
NONCE_BYTES = 12
TAG_BYTES = 16
_DOMAIN = "fedllm-secagg/v1"
_PROBE = X25519PrivateKey.from_private_bytes(bytes([9] * KEY_BYTES))
"""A fixed private key that tests public keys for low order (its secret is public)."""


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair.

    Attributes:
        private: the private key (never leaves its client, except as Shamir shares of
            the mask key).
        public: the public key, 32 raw bytes.
    """

    private: X25519PrivateKey
    public: bytes

    @property
    def private_bytes(self) -> bytes:
        """The private key, 32 raw bytes."""
        return self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )


def generate_key_pair(rng: Randomness) -> KeyPair:
    """A fresh key pair: ``X25519PrivateKey.generate()`` (the library's CSPRNG) when
    ``rng`` is not deterministic, else a private key of 32 bytes drawn from ``rng``
    (reproducible simulation)."""
    if rng.deterministic:
        private = X25519PrivateKey.from_private_bytes(rng.random_bytes(KEY_BYTES))
    else:
        private = X25519PrivateKey.generate()
    return _pair(private)


def load_key_pair(private_bytes: bytes) -> KeyPair:
    """The key pair of a 32-byte raw private key.

    Raises:
        SecAggViolation: not 32 bytes.
    """
    if len(private_bytes) != KEY_BYTES:
        raise SecAggViolation(f"a private key is {KEY_BYTES} bytes, not {len(private_bytes)}")
    return _pair(X25519PrivateKey.from_private_bytes(private_bytes))


def check_public_key(public: bytes) -> None:
    """Refuse an advertised public key no honest client could have made: not 32 bytes,
    or a low-order point (every agreement with it gives the all-zero secret, so a
    client advertising one would make each neighbour that agrees with it refuse).

    Any private key detects a low-order point (its clamped scalar is a multiple of 8,
    which sends such a point to the identity), so a fixed one serves.

    Raises:
        SecAggViolation: naming the problem.
    """
    if len(public) != KEY_BYTES:
        raise SecAggViolation(f"a public key is {KEY_BYTES} bytes, not {len(public)}")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as error:
        raise SecAggViolation(f"a public key is a low-order point: {error}") from error


def context_label(purpose: str, round_id: int, a: str, b: str) -> bytes:
    """The HKDF info of a pairwise key: the purpose, the round and the two ids, sorted,
    each length-prefixed (so no two contexts encode alike)."""
    low, high = sorted((a, b))
    return _encode_parts(_DOMAIN, purpose, str(round_id), low, high)


def agree(private: X25519PrivateKey, peer_public: bytes, label: bytes) -> bytes:
    """The 32-byte key shared with the owner of ``peer_public``: X25519, then HKDF-SHA256
    (no salt) with ``label`` as info.

    Raises:
        SecAggViolation: the peer's key is not 32 bytes or is a low-order point (the
            shared secret would be all zeros).
    """
    if len(peer_public) != KEY_BYTES:
        raise SecAggViolation(f"a public key is {KEY_BYTES} bytes, not {len(peer_public)}")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as error:
        raise SecAggViolation(f"key agreement failed: {error}") from error
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(shared)


def seal(
    key: bytes, plaintext: bytes, *, sender: str, recipient: str, round_id: int, rng: Randomness
) -> bytes:
    """Encrypt and authenticate ``plaintext`` from ``sender`` to ``recipient``.

    Args:
        key: the pair's 32-byte encryption key (:func:`agree`).
        plaintext: the message.
        sender: the sending client's id.
        recipient: the receiving client's id.
        round_id: the round; the ciphertext opens in this round only.
        rng: the 12-byte nonce's source.

    Returns:
        nonce (12 bytes) || ciphertext || tag (16 bytes).
    """
    nonce = rng.random_bytes(NONCE_BYTES)
    aad = _associated_data(sender, recipient, round_id)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, *, sender: str, recipient: str, round_id: int) -> bytes:
    """The plaintext of a :func:`seal` ciphertext.

    Raises:
        AuthenticationError: the ciphertext was altered, or sealed with another key,
            sender, recipient or round.
    """
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise AuthenticationError(f"a sealed message from {sender!r} is too short")
    aad = _associated_data(sender, recipient, round_id)
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag as error:
        raise AuthenticationError(
            f"the message from {sender!r} to {recipient!r} in round {round_id} failed "
            "authentication (tampered or redirected)"
        ) from error


def sign_advertised(
    signer: ec.EllipticCurvePrivateKey,
    round_id: int,
    client_id: str,
    public_c: bytes,
    public_s: bytes,
) -> bytes:
    """A client's signature (ECDSA, SHA-384, DER) of the two keys it advertises, bound to
    its id and the round."""
    message = _advertised(round_id, client_id, public_c, public_s)
    return signer.sign(message, ec.ECDSA(hashes.SHA384()))


def verify_advertised(
    roster: Roster,
    signature: bytes,
    round_id: int,
    client_id: str,
    public_c: bytes,
    public_s: bytes,
) -> None:
    """Check that ``client_id``'s node signed these keys for this round.

    Raises:
        AuthenticationError: the client has no key in the roster, or the signature does
            not verify (keys substituted, or signed for another client or round).
    """
    if client_id not in roster:
        raise AuthenticationError(f"client {client_id!r} has no authentication key in the roster")
    message = _advertised(round_id, client_id, public_c, public_s)
    try:
        roster[client_id].verify(signature, message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as error:
        raise AuthenticationError(
            f"the keys advertised for {client_id!r} in round {round_id} do not carry its "
            "node's signature (substituted, or signed for another client or round)"
        ) from error


def load_node_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """A node's authentication private key (``node-<i>.key``: OpenSSH, or PEM).

    Raises:
        ValueError: not an unencrypted elliptic-curve private key.
    """
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None)  # type: ignore[assignment]
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"a node key must be an elliptic-curve key, not {type(key).__name__}")
    return key


def load_node_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """A node's authentication public key (``node-<i>.pub``: an OpenSSH line, or PEM).

    Raises:
        ValueError: not an elliptic-curve public key.
    """
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
    else:
        key = serialization.load_ssh_public_key(data)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"a node key must be an elliptic-curve key, not {type(key).__name__}")
    return key


def _advertised(round_id: int, client_id: str, public_c: bytes, public_s: bytes) -> bytes:
    if len(public_c) != KEY_BYTES or len(public_s) != KEY_BYTES:
        raise SecAggViolation(f"advertised keys are {KEY_BYTES} bytes each")
    return _encode_parts(_DOMAIN, "advertise", str(round_id), client_id) + public_c + public_s


def _pair(private: X25519PrivateKey) -> KeyPair:
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return KeyPair(private=private, public=public)


def _associated_data(sender: str, recipient: str, round_id: int) -> bytes:
    return _encode_parts(_DOMAIN, "share", str(round_id), sender, recipient)


def _encode_parts(*parts: str) -> bytes:
    out = bytearray()
    for part in parts:
        data = part.encode()
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)
