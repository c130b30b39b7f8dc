"""Certificates and keys for a TLS, node-authenticated Flower deployment.

Each party makes its own keys, and only public files travel:

- the operator, on the SuperLink's machine, ``make_superlink_certs`` (``fedllm certs
  superlink``): ``ca.crt`` / ``ca.key``, a self-signed certificate authority (EC P-256),
  the ``--ssl-ca-certfile`` of the SuperLink and the ``--root-certificates`` of the
  SuperNodes and of ``flwr``; ``superlink.crt`` / ``superlink.key``, the SuperLink's
  server certificate (EC P-256, signed by the CA, subjectAltName: every host given, and
  always 127.0.0.1), its ``--ssl-certfile`` and ``--ssl-keyfile``;
- each organisation, on its node's machine, ``make_node_key`` (``fedllm certs node``):
  ``<name>.key`` / ``<name>.pub``, the node's authentication key pair (EC P-384, OpenSSH
  format). The private key is the node's ``--auth-supernode-private-key`` and never
  leaves its machine; the public key goes to the operator, for ``flwr supernode
  register`` and the roster;
- the operator, ``write_roster`` (``fedllm certs roster``): the SecAgg+ roster (client
  id -> node public key, :mod:`fedllm.secure.roster`) from the public key files the
  organisations sent; the server and every node get the same file.

``make_certs`` does all three into one folder, for a deployment whose nodes fedllm
itself starts on one machine (the loopback deployment of :mod:`fedllm.deploy.local`).

Private keys are unencrypted PEM/OpenSSH files of mode 0o600 in folders of mode 0o700
owned by the caller; nothing is written through a symbolic link or into anything but a
regular file.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedllm.deploy.link import CLIENT_NAME
from fedllm.secure.keys import load_node_public_key
from fedllm.secure.roster import roster_toml

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
LOOPBACK = "127.0.0.1"
"""Always in the SuperLink certificate: the SuperLink is bound to loopback, and its own
SuperExec and a fleet gateway on its machine reach it there."""
MAX_DAYS = 3650
"""The longest validity a certificate may be given (days: ten years)."""
MAX_PUBLIC_KEY_BYTES = 16 * 1024
"""A public key file larger than this is not one (an OpenSSH line is under 300 bytes)."""
ROSTER_FILE = "roster.toml"
CLOCK_SKEW = datetime.timedelta(minutes=5)
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_CLIENT_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class SuperLinkFiles:
    """Where the files of one ``make_superlink_certs`` call are.

    Attributes:
        folder: the folder holding them.
        ca_cert: the CA certificate (PEM); every party that checks the SuperLink trusts it.
        ca_key: the CA private key (PEM, PKCS#8); needed only to sign more certificates.
        server_cert: the SuperLink's certificate (PEM), signed by the CA.
        server_key: the SuperLink's private key (PEM, PKCS#8).
    """

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def at(cls, folder: Path) -> SuperLinkFiles:
        """The file names ``make_superlink_certs(folder, ...)`` writes (nothing is read)."""
        return cls(
            folder=folder,
            ca_cert=folder / "ca.crt",
            ca_key=folder / "ca.key",
            server_cert=folder / "superlink.crt",
            server_key=folder / "superlink.key",
        )

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file: certificates, then private keys."""
        return (self.ca_cert, self.server_cert, self.ca_key, self.server_key)


@dataclass(frozen=True)
class NodeKeyFiles:
    """Where ``make_node_key`` writes a node's authentication key pair.

    Attributes:
        private: ``<name>.key``, the private key (OpenSSH ECDSA P-384, mode 0o600): the
            node's ``--auth-supernode-private-key``; it never leaves the node's machine.
        public: ``<name>.pub``, the public key (an OpenSSH ``ecdsa-sha2-nistp384`` line):
            the one file that goes to the operator.
    """

    private: Path
    public: Path

    @classmethod
    def at(cls, folder: Path, name: str) -> NodeKeyFiles:
        """The file names ``make_node_key(folder, name)`` writes (nothing is read)."""
        return cls(private=folder / f"{name}.key", public=folder / f"{name}.pub")

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.public, self.private)


@dataclass(frozen=True)
class CertFiles:
    """Where the files of one ``make_certs`` call are.

    Attributes:
        folder: the folder holding all of them.
        ca_cert: the CA certificate (PEM); every party that checks the SuperLink trusts it.
        ca_key: the CA private key (PEM, PKCS#8); needed only to sign more certificates.
        server_cert: the SuperLink's certificate (PEM), signed by the CA.
        server_key: the SuperLink's private key (PEM, PKCS#8).
        node_keys: node ``i``'s private key (OpenSSH ECDSA) at index ``i``.
        node_public_keys: node ``i``'s public key (OpenSSH ``ecdsa-sha2-nistp384``).
        roster: the SecAgg+ roster (client id -> node public key), or None when no
            client names were given.
    """

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[Path, ...]
    node_public_keys: tuple[Path, ...]
    roster: Path | None = None

    @classmethod
    def at(cls, folder: Path, nodes: int, roster: bool = False) -> CertFiles:
        """The file names ``make_certs(folder, nodes)`` writes (nothing is read or written);
        ``roster``: with client names, so ``roster.toml`` too."""
        superlink = SuperLinkFiles.at(folder)
        pairs = [NodeKeyFiles.at(folder, node_name(i)) for i in range(nodes)]
        return cls(
            folder=folder,
            ca_cert=superlink.ca_cert,
            ca_key=superlink.ca_key,
            server_cert=superlink.server_cert,
            server_key=superlink.server_key,
            node_keys=tuple(pair.private for pair in pairs),
            node_public_keys=tuple(pair.public for pair in pairs),
            roster=folder / ROSTER_FILE if roster else None,
        )

    @property
    def private_keys(self) -> tuple[Path, ...]:
        """Every private key file (written with mode 0o600)."""
        return (self.ca_key, self.server_key, *self.node_keys)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file, certificates and public keys included."""
        roster = () if self.roster is None else (self.roster,)
        public = (self.ca_cert, self.server_cert, *self.node_public_keys, *roster)
        return (*public, *self.private_keys)


def node_name(index: int) -> str:
    """The key name of node ``index`` in a ``make_certs`` folder: ``node-<index>``."""
    return f"node-{index}"


def make_superlink_certs(
    out: Path,
    hosts: Sequence[str],
    overwrite: bool = False,
    days: int = 365,
) -> SuperLinkFiles:
    """Write a CA and the SuperLink's certificate for ``hosts`` into ``out``: what the
    operator runs on the SuperLink's machine. No node key is made here.

    The certificate's subjectAltName always names 127.0.0.1 (:data:`LOOPBACK`, appended
    when ``hosts`` lacks it): the SuperLink is bound to loopback, and its own SuperExec
    and a fleet gateway on its machine connect to it there, checking it against the CA.

    Args:
        out: the folder to write into (created, or tightened to mode 0o700).
        hosts: the names the SuperNodes and ``flwr`` reach the SuperLink by: IPv4/IPv6
            addresses and DNS names, without port; the first is the certificate's
            common name.
        overwrite: replace files a previous call wrote; without it an existing file is
            an error and nothing is written.
        days: how long the certificates are valid, from now (1 to :data:`MAX_DAYS`).

    Returns:
        The paths written.

    Raises:
        ValueError: ``hosts`` or ``days`` is not valid, or ``out`` or a file in it is not
            safe to write (the message says what is).
        FileExistsError: a file to write exists and ``overwrite`` is False.
    """
    names = superlink_hosts(hosts)
    check_days(days)
    files = SuperLinkFiles.at(out)
    check_folder(out)
    check_targets(files.paths, overwrite)
    private_folder(out)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, now, days)
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = subject_alt_names(names)
    server_cert = _server_certificate(server_key, ca_key, ca_cert, names[0], sans, now, days)
    write_key_file(files.ca_cert, _pem(ca_cert), private=False, overwrite=overwrite)
    write_key_file(files.ca_key, _pkcs8(ca_key), private=True, overwrite=overwrite)
    write_key_file(files.server_cert, _pem(server_cert), private=False, overwrite=overwrite)
    write_key_file(files.server_key, _pkcs8(server_key), private=True, overwrite=overwrite)
    return files


def make_node_key(out: Path, name: str = "node", overwrite: bool = False) -> NodeKeyFiles:
    """Write a node's authentication key pair, ``<name>.key`` and ``<name>.pub``, into
    ``out``: what an organisation runs on its node's machine. Only ``<name>.pub`` leaves
    that machine (to the operator, who registers it and puts it in the roster).

    Args:
        out: the folder to write into (created, or tightened to mode 0o700).
        name: the files' stem, a client name (1-64 letters, digits, '.', '_', '-').
        overwrite: replace an earlier pair of that name; without it an existing file is
            an error and nothing is written.

    Returns:
        The paths written.

    Raises:
        ValueError: ``name`` is not a client name, or ``out`` or a file in it is not safe
            to write.
        FileExistsError: a file to write exists and ``overwrite`` is False.
    """
    check_client_name(name, "key name")
    files = NodeKeyFiles.at(out, name)
    check_folder(out)
    check_targets(files.paths, overwrite)
    private_folder(out)
    private, public = node_key_pair(f"fedllm-{name}")
    write_key_file(files.private, private, private=True, overwrite=overwrite)
    write_key_file(files.public, public, private=False, overwrite=overwrite)
    return files


def write_roster(path: Path, public_keys: Mapping[str, Path], overwrite: bool = False) -> Path:
    """Write the SecAgg+ roster (client id -> node public key) from the public key files
    the organisations sent (``<name>.pub`` of ``make_node_key``, or a PEM public key).

    Every file is checked before anything is written. Each key goes into the roster in
    its canonical OpenSSH form (the sender's comment dropped): nothing else of a file
    reaches the roster.

    Args:
        path: the roster file to write (mode 0o644; its folder is created if missing).
        public_keys: client id -> the file holding the public key of its node.
        overwrite: replace an existing roster; without it an existing file is an error.

    Returns:
        ``path``.

    Raises:
        ValueError: (naming the file and the client) no clients, a client id that is not
            a node client name, a file that holds a private key or is not an
            elliptic-curve public key (an OpenSSH line or PEM), or one key given to two
            clients; ``path`` is not safe to write.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    if not public_keys:
        raise ValueError("no clients: a roster needs at least one client id = public key file")
    lines: dict[str, bytes] = {}
    owners: dict[bytes, tuple[str, Path]] = {}
    for client, key_file in public_keys.items():
        check_client_name(client, "client id")
        key = read_node_public_key(Path(key_file), client)
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if der in owners:
            first, first_file = owners[der]
            raise ValueError(
                f"{key_file} (client {client!r}) holds the same public key as {first_file} "
                f"(client {first!r}): every node makes its own key pair "
                "(`fedllm certs node`), so each client needs its own node's key"
            )
        owners[der] = (client, Path(key_file))
        lines[client] = key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    check_targets((path,), overwrite)
    text = roster_toml(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_key_file(path, text.encode(), private=False, overwrite=overwrite)
    return path


def read_node_public_key(path: Path, client: str) -> ec.EllipticCurvePublicKey:
    """The node public key in the file at ``path``, sent for ``client``.

    Raises:
        ValueError: (naming the file and the client) the file is missing or not a regular
            file, holds a private key, or is not an elliptic-curve public key on a NIST
            curve (an OpenSSH line or PEM).
    """
    where = f"{path} (client {client!r})"
    if not path.is_file():
        raise ValueError(f"{where} is missing or not a file: give the node's <name>.pub")
    with path.open("rb") as source:
        data = source.read(MAX_PUBLIC_KEY_BYTES + 1)
    if b"PRIVATE KEY" in data:
        raise ValueError(
            f"{where} holds a PRIVATE key: a node's private key never leaves its machine; "
            "ask for its <name>.pub instead, and have the node make a new pair "
            "(`fedllm certs node --overwrite`): this one has been exposed"
        )
    if len(data) > MAX_PUBLIC_KEY_BYTES:
        raise ValueError(f"{where} is over {MAX_PUBLIC_KEY_BYTES} bytes: not a public key file")
    try:
        key = load_node_public_key(data)
        key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ValueError(
            f"{where} is not an elliptic-curve public key on a NIST curve: give the "
            f"OpenSSH line `fedllm certs node` writes (<name>.pub) or a PEM public key "
            f"({error})"
        ) from None
    return key


def client_key_files(items: Iterable[str]) -> dict[str, Path]:
    """``CLIENT=PUBKEY_FILE`` items (``fedllm certs roster --client``) as client id -> file.

    Raises:
        ValueError: an item without ``=`` or with an empty side, or a client named twice.
    """
    files: dict[str, Path] = {}
    for item in items:
        client, sep, file = item.partition("=")
        if not sep or not client or not file:
            raise ValueError(
                f"--client {item!r}: need CLIENT=PUBKEY_FILE, e.g. org-a=keys/org-a.pub"
            )
        if client in files:
            raise ValueError(
                f"client {client!r} is given twice ({files[client]} and {file}): give each "
                "client once, with its node's public key"
            )
        files[client] = Path(file)
    return files


def make_certs(
    out: Path,
    nodes: int,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    overwrite: bool = False,
    days: int = 365,
    clients: Sequence[str] | None = None,
) -> CertFiles:
    """Write a CA, the SuperLink's certificate for ``hosts`` and ``nodes`` node key pairs
    (and, with ``clients``, the SecAgg+ roster of their public keys) into one folder.

    For a deployment whose nodes all run on this machine (fedllm starts them): across
    machines each node makes its own key (:func:`make_node_key`). This is
    :func:`make_superlink_certs`, :func:`make_node_key` for ``node-<i>`` and
    :func:`write_roster`, with every input and file checked before anything is written.

    Args:
        out: the folder to write into (created, or tightened to mode 0o700).
        nodes: how many SuperNode key pairs (``node-0`` ... ``node-<nodes-1>``), at least 1.
        hosts: as :func:`make_superlink_certs` (127.0.0.1 is always added).
        overwrite: replace files a previous call wrote (node keys beyond ``nodes`` are
            deleted); without it an existing file is an error and nothing is written.
        days: how long the certificates are valid, from now (1 to :data:`MAX_DAYS`).
        clients: the client node ``i`` answers for, at index ``i`` (one per node):
            ``roster.toml`` maps each to its node's public key; None: no roster (an
            earlier one is deleted with ``overwrite``: its keys are gone).

    Returns:
        The paths written.

    Raises:
        ValueError: ``nodes``, ``hosts``, ``days`` or ``clients`` is not valid, or
            ``out`` or a file in it is not safe to write (the message says what is).
        FileExistsError: a file to write exists and ``overwrite`` is False.
    """
    superlink_hosts(hosts)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes = {nodes!r}: need a whole number of SuperNodes, at least 1")
    check_days(days)
    if clients is not None:
        check_roster_clients(clients, nodes)
    files = CertFiles.at(out, nodes, roster=clients is not None)
    check_folder(out)
    check_targets(files.paths, overwrite)
    make_superlink_certs(out, hosts, overwrite=overwrite, days=days)
    pairs = [make_node_key(out, node_name(i), overwrite=overwrite) for i in range(nodes)]
    _remove_stale_node_keys(out, nodes)
    if files.roster is not None and clients is not None:
        public = {str(client): pair.public for client, pair in zip(clients, pairs, strict=True)}
        write_roster(files.roster, public, overwrite=overwrite)
    elif overwrite:
        (out / ROSTER_FILE).unlink(missing_ok=True)  # it names keys that no longer exist
    return files


def check_days(days: int) -> None:
    """Refuse a validity that is not a whole number of days from 1 to :data:`MAX_DAYS`.

    Raises:
        ValueError: naming the valid range.
    """
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValueError(
            f"days = {days!r}: need a whole number of days from 1 to {MAX_DAYS} (ten "
            "years); make new certificates when they run out"
        )


def check_client_name(name: str, what: str = "client id") -> None:
    """Refuse ``name`` unless it is a node client name (:data:`fedllm.deploy.link.CLIENT_NAME`).

    Raises:
        ValueError: naming it and the rule.
    """
    if not isinstance(name, str) or CLIENT_NAME.fullmatch(name) is None:
        raise ValueError(f"{what} {name!r} is not a client name: use {_CLIENT_NAME_RULE}")


def check_roster_clients(clients: Sequence[str], nodes: int) -> None:
    """Refuse client names that cannot make a roster of ``nodes`` nodes.

    Raises:
        ValueError: not one distinct client name per node.
    """
    if isinstance(clients, str):
        raise ValueError(f"clients = {clients!r}: need a sequence of names, e.g. ({clients!r},)")
    names = [str(c) for c in clients]
    if len(names) != nodes or len(set(names)) != len(names) or not all(names):
        raise ValueError(
            f"clients = {names}: need one distinct client id per node ({nodes}), in node "
            "order (node i answers for the i-th)"
        )
    for name in names:
        check_client_name(name)


def _remove_stale_node_keys(out: Path, nodes: int) -> None:
    """Delete ``node-<i>.key``/``.pub`` for i >= ``nodes``: keys an earlier call made for
    more nodes, which would otherwise look like part of this set."""
    for path in out.glob("node-*.*"):
        index = path.stem.removeprefix("node-")
        if path.suffix in (".key", ".pub") and index.isdigit() and int(index) >= nodes:
            path.unlink()


def superlink_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """The hosts a SuperLink certificate names: ``hosts``, then 127.0.0.1
    (:data:`LOOPBACK`) unless one of them is that address.

    Raises:
        ValueError: ``hosts`` is not valid (see :func:`subject_alt_names`).
    """
    subject_alt_names(hosts)
    loopback = ipaddress.ip_address(LOOPBACK)
    if any(_ip_address(host) == loopback for host in hosts):
        return tuple(hosts)
    return (*hosts, LOOPBACK)


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """``hosts`` as subjectAltName entries: IP addresses as IPAddress, names as DNSName.

    Raises:
        ValueError: no hosts, or a host that is neither an IP address nor a DNS name.
    """
    if isinstance(hosts, str):
        raise ValueError(f"hosts = {hosts!r}: need a sequence of hosts, e.g. ({hosts!r},)")
    if len(hosts) == 0:
        raise ValueError(
            "hosts is empty: need at least one IP address or DNS name the SuperLink is "
            "reached by, e.g. 127.0.0.1 or superlink.example.org"
        )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(str(host))))
            continue
        except ValueError:
            pass
        if not isinstance(host, str) or _DNS_NAME.fullmatch(host) is None or len(host) > 253:
            raise ValueError(
                f"host {host!r} is neither an IP address nor a DNS name: give an IPv4/IPv6 "
                "address (127.0.0.1, ::1) or a name of letters, digits, '-' and '.' "
                "(superlink.example.org), without port or scheme"
            )
        names.append(x509.DNSName(host))
    return names


def node_key_pair(comment: str) -> tuple[bytes, bytes]:
    """A fresh EC P-384 key pair: (OpenSSH private key, OpenSSH public key line).

    The formats ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode
    register`` read (both load them with ``load_ssh_*_key`` and accept NIST curves).
    """
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + f" {comment}\n".encode()


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, now: datetime.datetime, days: int
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedllm"),
            x509.NameAttribute(NameOID.COMMON_NAME, "fedllm deployment CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)
    return (
        _validity(x509.CertificateBuilder(), now, days)
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    sans: list[x509.GeneralName],
    now: datetime.datetime,
    days: int,
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedllm"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    return (
        _validity(x509.CertificateBuilder(), now, days)
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _validity(
    builder: x509.CertificateBuilder, now: datetime.datetime, days: int
) -> x509.CertificateBuilder:
    """A fresh serial number; valid from ``CLOCK_SKEW`` ago for ``days`` days."""
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(
    digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def check_targets(paths: Iterable[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, files that ``write_key_file`` would refuse.

    Raises:
        FileExistsError: a path exists and ``overwrite`` is False.
        ValueError: a path is a symbolic link or exists and is not a regular file.
    """
    for path in paths:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            raise ValueError(_unsafe(path, "a symbolic link"))
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(_unsafe(path, "not a regular file"))
        if not overwrite:
            raise FileExistsError(
                f"{path} exists; refusing to overwrite it (pass overwrite=True to replace "
                f"the files in {path.parent})"
            )


def check_folder(out: Path) -> None:
    """Refuse, before anything is written, an output folder ``private_folder`` would refuse.

    Raises:
        ValueError: ``out`` is a symbolic link, not a folder, or not the caller's own.
    """
    try:
        info = os.lstat(out)
    except FileNotFoundError:
        return
    _check_folder_info(out, info)


def private_folder(out: Path) -> None:
    """Make ``out`` a folder only its owner may enter: create it (mode 0o700, parents as
    needed) or tighten an existing one to 0o700 (opened without following a link).

    Raises:
        ValueError: ``out`` is a symbolic link, not a folder, or not the caller's own.
    """
    check_folder(out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        check_folder(out)  # it changed since the check: say how
        raise
    try:
        _check_folder_info(out, os.fstat(fd))
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _check_folder_info(out: Path, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
        raise ValueError(
            f"{out} is {kind}: keys go into a folder of your own, never through a link; "
            "give the path of a folder (it is created if missing)"
        )
    if info.st_uid != os.geteuid():
        raise ValueError(
            f"{out} belongs to user id {info.st_uid}, not to you ({os.geteuid()}): "
            "private keys go into a folder of your own"
        )


def write_key_file(path: Path, data: bytes, private: bool, overwrite: bool) -> None:
    """Write ``data`` to ``path``: mode 0o600 if ``private`` else 0o644, whatever the umask.

    Without ``overwrite`` the file is created exclusively (a file that appeared since the
    check is an error, not replaced). With it, an existing regular file is replaced in
    place. Never through a symbolic link (``O_NOFOLLOW``), nor into anything but a regular
    file of one link: such a path is refused before its target is truncated or chmod'ed.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: ``path`` is a symbolic link, not a regular file, or a file with
            another name (a hard link).
    """
    mode = 0o600 if private else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    if not overwrite:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(_unsafe(path, "a symbolic link")) from None
        if error.errno in (errno.EISDIR, errno.ENXIO):  # a folder; a FIFO nobody reads
            raise ValueError(_unsafe(path, "not a regular file")) from None
        raise
    with os.fdopen(fd, "wb") as sink:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(_unsafe(path, "not a regular file"))
        if info.st_nlink != 1:
            raise ValueError(_unsafe(path, "a file with other names (hard links)"))
        os.fchmod(fd, mode)  # an existing file keeps its mode on open; the umask trims new ones
        os.ftruncate(fd, 0)
        sink.write(data)


def _unsafe(path: Path, kind: str) -> str:
    return (
        f"{path} is {kind}: refusing to write a key or certificate there; remove it, or "
        "choose another folder"
    )
