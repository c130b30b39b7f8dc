"""Certificates and keys for a TLS, node-authenticated Flower deployment.

``make_certs`` writes, into one folder:

- ``ca.crt`` / ``ca.key``: a self-signed certificate authority (EC P-256), the
  ``--ssl-ca-certfile`` of the SuperLink and the ``--root-certificates`` of the
  SuperNodes and of ``flwr`` (``root-certificates`` in ``FLWR_HOME/config.toml``);
- ``superlink.crt`` / ``superlink.key``: the SuperLink's server certificate (EC P-256,
  signed by the CA, subjectAltName: every host given), its ``--ssl-certfile`` and
  ``--ssl-keyfile``;
- ``node-<i>.key`` / ``node-<i>.pub``: SuperNode ``i``'s authentication key pair (EC
  P-384, OpenSSH format): the private key is its ``--auth-supernode-private-key``, the
  public key what ``flwr supernode register`` takes;
- ``roster.toml`` (with ``clients``: node ``i`` answers for ``clients[i]``): client id ->
  node public key, the ``secagg.roster`` that makes SecAgg+ sign its advertised keys
  (:mod:`fedllm.secure.roster`); give it to the server and every node.

Private keys are unencrypted PEM/OpenSSH files of mode 0o600: keep the folder private,
and give each node only its own ``node-<i>.key`` and ``ca.crt``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedllm.secure.roster import roster_toml

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
ROSTER_FILE = "roster.toml"
CLOCK_SKEW = datetime.timedelta(minutes=5)
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")


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
        return cls(
            folder=folder,
            ca_cert=folder / "ca.crt",
            ca_key=folder / "ca.key",
            server_cert=folder / "superlink.crt",
            server_key=folder / "superlink.key",
            node_keys=tuple(folder / f"node-{i}.key" for i in range(nodes)),
            node_public_keys=tuple(folder / f"node-{i}.pub" for i in range(nodes)),
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


def make_certs(
    out: Path,
    nodes: int,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    overwrite: bool = False,
    days: int = 365,
    clients: Sequence[str] | None = None,
) -> CertFiles:
    """Write a CA, the SuperLink's certificate for ``hosts`` and ``nodes`` node key pairs
    (and, with ``clients``, the SecAgg+ roster of their public keys).

    Args:
        out: the folder to write into (created, mode 0o700, if missing).
        nodes: how many SuperNode key pairs (``node-0`` ... ``node-<nodes-1>``), at least 1.
        hosts: the names the SuperNodes and ``flwr`` reach the SuperLink by: IPv4/IPv6
            addresses and DNS names, without port; the first is the certificate's
            common name.
        overwrite: replace files a previous call wrote (node keys beyond ``nodes`` are
            deleted); without it an existing file is an error and nothing is written.
        days: how long the certificates are valid, from now (days, at least 1).
        clients: the client node ``i`` answers for, at index ``i`` (one per node):
            ``roster.toml`` maps each to its node's public key; None: no roster (an
            earlier one is deleted with ``overwrite``: its keys are gone).

    Returns:
        The paths written.

    Raises:
        ValueError: ``nodes``, ``hosts``, ``days`` or ``clients`` is not valid (the
            message says what is).
        FileExistsError: a file to write exists and ``overwrite`` is False.
    """
    sans = subject_alt_names(hosts)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes = {nodes!r}: need a whole number of SuperNodes, at least 1")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days = {days!r}: need a whole number of days, at least 1")
    if clients is not None:
        check_roster_clients(clients, nodes)
    files = CertFiles.at(out, nodes, roster=clients is not None)
    if not overwrite:
        for path in files.paths:
            if path.exists():
                raise FileExistsError(
                    f"{path} exists; refusing to overwrite it (pass overwrite=True to "
                    f"replace the certificates and keys in {out})"
                )
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, now, days)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _server_certificate(server_key, ca_key, ca_cert, hosts[0], sans, now, days)
    write_key_file(files.ca_cert, _pem(ca_cert), private=False, overwrite=overwrite)
    write_key_file(files.ca_key, _pkcs8(ca_key), private=True, overwrite=overwrite)
    write_key_file(files.server_cert, _pem(server_cert), private=False, overwrite=overwrite)
    write_key_file(files.server_key, _pkcs8(server_key), private=True, overwrite=overwrite)
    publics: list[bytes] = []
    for i, (key_path, pub_path) in enumerate(
        zip(files.node_keys, files.node_public_keys, strict=True)
    ):
        private, public = node_key_pair(f"fedllm-node-{i}")
        write_key_file(key_path, private, private=True, overwrite=overwrite)
        write_key_file(pub_path, public, private=False, overwrite=overwrite)
        publics.append(public)
    _remove_stale_node_keys(out, nodes)
    if files.roster is not None and clients is not None:
        text = roster_toml(dict(zip(clients, publics, strict=True)))
        write_key_file(files.roster, text.encode(), private=False, overwrite=overwrite)
    elif overwrite:
        (out / ROSTER_FILE).unlink(missing_ok=True)  # it names keys that no longer exist
    return files


def check_roster_clients(clients: Sequence[str], nodes: int) -> None:
    """Refuse client names that cannot make a roster of ``nodes`` nodes.

    Raises:
        ValueError: not one distinct, non-empty name per node.
    """
    if isinstance(clients, str):
        raise ValueError(f"clients = {clients!r}: need a sequence of names, e.g. ({clients!r},)")
    names = [str(c) for c in clients]
    if len(names) != nodes or len(set(names)) != len(names) or not all(names):
        raise ValueError(
            f"clients = {names}: need one distinct client id per node ({nodes}), in node "
            "order (node i answers for the i-th)"
        )


def _remove_stale_node_keys(out: Path, nodes: int) -> None:
    """Delete ``node-<i>.key``/``.pub`` for i >= ``nodes``: keys an earlier call made for
    more nodes, which would otherwise look like part of this set."""
    for path in out.glob("node-*.*"):
        index = path.stem.removeprefix("node-")
        if path.suffix in (".key", ".pub") and index.isdigit() and int(index) >= nodes:
            path.unlink()


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


def write_key_file(path: Path, data: bytes, private: bool, overwrite: bool) -> None:
    """Write ``data`` to ``path``: mode 0o600 if ``private`` else 0o644, whatever the umask.

    Without ``overwrite`` the file is created exclusively (a file that appeared since the
    check is an error, not replaced).
    """
    mode = 0o600 if private else 0o644
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as sink:
        os.fchmod(fd, mode)  # an existing file keeps its mode on open; the umask trims new ones
        sink.write(data)
