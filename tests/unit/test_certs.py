"""make_certs: a CA, a SuperLink certificate for the given hosts, node key pairs Flower reads."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedllm.deploy.certs import CertFiles, make_certs

HOSTS = ("10.1.2.3", "::1", "superlink.example.org")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(files: CertFiles, ca: Path, subject: x509.verification.Subject) -> None:
    verifier = PolicyBuilder().store(Store([_cert(ca)])).build_server_verifier(subject)
    verifier.verify(_cert(files.server_cert), [])


def test_the_server_certificate_verifies_against_the_ca_for_every_host(tmp_path: Path) -> None:
    files = make_certs(tmp_path / "certs", nodes=1, hosts=HOSTS)
    for host in HOSTS[:2]:
        _verify(files, files.ca_cert, x509.IPAddress(ipaddress.ip_address(host)))
    _verify(files, files.ca_cert, x509.DNSName("superlink.example.org"))
    with pytest.raises(VerificationError):  # a host not named
        _verify(files, files.ca_cert, x509.DNSName("other.example.org"))
    with pytest.raises(VerificationError):  # an address not named
        _verify(files, files.ca_cert, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    stranger = make_certs(tmp_path / "other", nodes=1, hosts=HOSTS)
    with pytest.raises(VerificationError):  # another deployment's CA
        _verify(files, stranger.ca_cert, x509.DNSName("superlink.example.org"))


def test_subject_alt_names_hold_ips_as_addresses_and_names_as_dns(tmp_path: Path) -> None:
    files = make_certs(tmp_path, nodes=1, hosts=HOSTS)
    cert = _cert(files.server_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    }
    assert sans.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "10.1.2.3"
    default = _cert(make_certs(tmp_path / "default", nodes=1).server_cert)
    default_sans = default.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert default_sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert default_sans.get_values_for_type(x509.DNSName) == ["localhost"]


def test_the_ca_is_a_self_signed_ca_and_the_server_cert_is_not(tmp_path: Path) -> None:
    files = make_certs(tmp_path, nodes=1)
    ca, server = _cert(files.ca_cert), _cert(files.server_cert)
    ca.verify_directly_issued_by(ca)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_key = load_pem_private_key(files.ca_key.read_bytes(), None)
    server_key = load_pem_private_key(files.server_key.read_bytes(), None)
    assert ca_key.public_key() == ca.public_key()
    assert server_key.public_key() == server.public_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    assert server.not_valid_before_utc < now < server.not_valid_after_utc
    assert server.not_valid_after_utc - now > datetime.timedelta(days=364)


def test_python_tls_accepts_the_chain_in_strict_mode(tmp_path: Path) -> None:
    """What uvicorn (the SuperLink) and httpx (SuperNodes, flwr) do: a real handshake."""
    files = make_certs(tmp_path, nodes=1)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=files.ca_cert)
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13 on
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(5))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"hello")
            assert tls.recv(5) == b"hello"
        thread.join(timeout=10)


def _ec_private(path: Path) -> ec.EllipticCurvePrivateKey:
    key = load_ssh_private_key(path.read_bytes(), None)  # how flower-supernode reads it
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _ec_public(path: Path) -> ec.EllipticCurvePublicKey:
    key = load_ssh_public_key(path.read_bytes())  # how flwr supernode register reads it
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def test_node_keys_load_as_openssh_ecdsa_pairs(tmp_path: Path) -> None:
    files = make_certs(tmp_path, nodes=3)
    assert [p.name for p in files.node_keys] == ["node-0.key", "node-1.key", "node-2.key"]
    assert [p.name for p in files.node_public_keys] == ["node-0.pub", "node-1.pub", "node-2.pub"]
    privates = [_ec_private(p) for p in files.node_keys]
    publics = [_ec_public(p) for p in files.node_public_keys]
    message = b"node auth request"
    for i, (private, public) in enumerate(zip(privates, publics, strict=True)):
        assert isinstance(public.curve, ec.SECP384R1)  # a NIST curve, as flwr requires
        signature = private.sign(message, ec.ECDSA(hashes.SHA256()))
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        other = publics[(i + 1) % len(publics)]
        with pytest.raises(InvalidSignature):  # every node has its own key
            other.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    assert files.node_public_keys[0].read_text().startswith("ecdsa-sha2-nistp384 ")
    assert files.node_keys[0].read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_private_keys_are_0600_and_public_files_0644(tmp_path: Path) -> None:
    files = make_certs(tmp_path / "certs", nodes=2)
    assert len(files.private_keys) == 4 and len(files.paths) == 8
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == sorted(
        p.name for p in files.paths
    )
    for path in files.private_keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (files.ca_cert, files.server_cert, *files.node_public_keys):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    files.node_keys[1].chmod(0o644)  # a loosened key gets its mode back on overwrite
    make_certs(tmp_path / "certs", nodes=2, overwrite=True)
    assert stat.S_IMODE(files.node_keys[1].stat().st_mode) == 0o600


def test_existing_files_are_refused_unless_overwrite(tmp_path: Path) -> None:
    files = make_certs(tmp_path, nodes=2)
    before = {p: p.read_bytes() for p in files.paths}
    with pytest.raises(FileExistsError, match=r"ca\.crt exists.*overwrite=True"):
        make_certs(tmp_path, nodes=2)
    assert {p: p.read_bytes() for p in files.paths} == before
    again = make_certs(tmp_path, nodes=2, overwrite=True)
    assert again == files
    assert all(p.read_bytes() != before[p] for p in files.paths)


def test_overwrite_with_fewer_nodes_deletes_the_extra_node_keys_only(tmp_path: Path) -> None:
    make_certs(tmp_path, nodes=3)
    (tmp_path / "node-notes.txt").write_text("the operator's own file")
    fewer = make_certs(tmp_path, nodes=1, overwrite=True)
    node_files = sorted(p.name for p in tmp_path.glob("node-*"))
    assert node_files == ["node-0.key", "node-0.pub", "node-notes.txt"]
    assert set(fewer.paths) <= set(tmp_path.iterdir())


def test_one_file_in_the_way_stops_everything_before_any_write(tmp_path: Path) -> None:
    (tmp_path / "node-1.pub").write_text("someone else's key")
    with pytest.raises(FileExistsError, match=r"node-1\.pub"):
        make_certs(tmp_path, nodes=2)
    assert [p.name for p in tmp_path.iterdir()] == ["node-1.pub"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0}, r"nodes = 0: .*at least 1"),
        ({"nodes": -2}, r"nodes = -2: .*at least 1"),
        ({"nodes": True}, r"nodes = True: .*whole number"),
        ({"nodes": 1.5}, r"nodes = 1.5: .*whole number"),
        ({"hosts": ()}, r"hosts is empty: .*IP address or DNS name"),
        ({"hosts": "localhost"}, r"hosts = 'localhost': need a sequence"),
        ({"hosts": ("127.0.0.1:9092",)}, r"host '127.0.0.1:9092' is neither .*without port"),
        ({"hosts": ("https://x.org",)}, r"host 'https://x.org' is neither"),
        ({"hosts": ("localhost", "")}, r"host '' is neither"),
        ({"hosts": ("bad_name",)}, r"host 'bad_name' is neither"),
        ({"days": 0}, r"days = 0: .*at least 1"),
    ],
)
def test_bad_input_is_a_value_error_naming_it_and_writes_nothing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    out = tmp_path / "certs"
    args: dict[str, object] = {"nodes": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_certs(out, **args)  # type: ignore[arg-type]
    assert not out.exists()


def test_cert_files_is_frozen_and_names_the_files_of_a_folder() -> None:
    files = CertFiles.at(Path("certs"), 2)
    assert files.server_key == Path("certs/superlink.key")
    assert files.node_public_keys[1] == Path("certs/node-1.pub")
    with pytest.raises(dataclasses.FrozenInstanceError):
        files.ca_cert = Path("elsewhere")  # type: ignore[misc]


def test_fedllm_certs_writes_the_files_and_refuses_to_overwrite_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedllm.cli import main

    out = tmp_path / "certs"
    assert main(["certs", str(out), "--nodes", "2", "--host", "fl.example.org"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"ca.crt", "superlink.crt", "superlink.key", "node-1.key", "node-1.pub"} <= names
    server = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    before = (out / "ca.key").read_bytes()
    assert main(["certs", str(out), "--nodes", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "ca.key").read_bytes() == before
    assert main(["certs", str(out), "--nodes", "0", "--overwrite"]) == 2
    assert main(["certs", str(out), "--nodes", "1", "--overwrite"]) == 0
    assert (out / "ca.key").read_bytes() != before
