"""fedllm certs: a CA and a SuperLink certificate for the given hosts (and 127.0.0.1), node
key pairs Flower reads made where the node runs, a roster from public keys only; and
make_certs, which composes them for the loopback deployment."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedllm.cli import main
from fedllm.deploy.certs import (
    MAX_DAYS,
    CertFiles,
    NodeKeyFiles,
    SuperLinkFiles,
    client_key_files,
    make_certs,
    make_node_key,
    make_superlink_certs,
    write_key_file,
    write_roster,
)
from fedllm.secure.roster import load_roster

HOSTS = ("10.1.2.3", "::1", "superlink.example.org")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(
    files: CertFiles | SuperLinkFiles, ca: Path, subject: x509.verification.Subject
) -> None:
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
        _verify(files, files.ca_cert, x509.IPAddress(ipaddress.ip_address("10.9.9.9")))
    _verify(files, files.ca_cert, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))  # always
    stranger = make_certs(tmp_path / "other", nodes=1, hosts=HOSTS)
    with pytest.raises(VerificationError):  # another deployment's CA
        _verify(files, stranger.ca_cert, x509.DNSName("superlink.example.org"))


def test_subject_alt_names_hold_ips_as_addresses_and_names_as_dns(tmp_path: Path) -> None:
    files = make_certs(tmp_path, nodes=1, hosts=HOSTS)
    cert = _cert(files.server_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [  # loopback appended, last
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "10.1.2.3"
    default = _cert(make_certs(tmp_path / "default", nodes=1).server_cert)
    default_sans = default.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert default_sans.get_values_for_type(x509.IPAddress) == [  # given: not added twice
        ipaddress.ip_address("127.0.0.1")
    ]
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
        ({"days": 0}, r"days = 0: .*from 1 to 3650"),
        ({"days": MAX_DAYS + 1}, r"days = 3651: .*from 1 to 3650"),
        ({"days": 100000}, r"days = 100000: .*from 1 to 3650"),
        ({"days": 30.5}, r"days = 30.5: .*whole number"),
        ({"clients": ("../a",)}, r"client id '../a' is not a client name: use 1-64 letters"),
        ({"clients": ("a", "a"), "nodes": 2}, r"one distinct client id per node"),
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


def test_make_certs_is_the_superlink_certs_the_node_keys_and_the_roster(tmp_path: Path) -> None:
    files = make_certs(tmp_path, nodes=2, clients=("org-a", "org-b"))
    superlink = SuperLinkFiles.at(tmp_path)
    assert (files.ca_cert, files.ca_key) == (superlink.ca_cert, superlink.ca_key)
    assert (files.server_cert, files.server_key) == (superlink.server_cert, superlink.server_key)
    assert NodeKeyFiles(files.node_keys[1], files.node_public_keys[1]) == NodeKeyFiles.at(
        tmp_path, "node-1"
    )
    assert files.roster is not None
    roster = load_roster(files.roster)
    for client, pub in zip(("org-a", "org-b"), files.node_public_keys, strict=True):
        assert roster[client] == _ec_public(pub)


# Who makes what where: the SuperLink's machine, a node's machine, the roster.


def _file_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_fedllm_certs_superlink_writes_no_node_key_and_names_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "superlink"
    assert main(["certs", "superlink", str(out), "--host", "fl.example.org"]) == 0
    tree = _file_tree(out)
    assert sorted(tree) == ["ca.crt", "ca.key", "superlink.crt", "superlink.key"]
    for name, data in tree.items():  # no OpenSSH (node) key, private or public, anywhere
        assert b"OPENSSH" not in data and b"ecdsa-sha2" not in data, name
    files = SuperLinkFiles.at(out)
    cert = _cert(files.server_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == (
        "fl.example.org"
    )
    _verify(files, files.ca_cert, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    _verify(files, files.ca_cert, x509.DNSName("fl.example.org"))
    err = capsys.readouterr().err
    assert "ca.crt: give it to every node" in err and "keep it offline" in err
    assert "fl.example.org, 127.0.0.1" in err


def test_make_superlink_certs_adds_loopback_once_and_makes_nothing_else(tmp_path: Path) -> None:
    files = make_superlink_certs(tmp_path / "a", ["fl.example.org", "10.0.0.5"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in files.paths)
    sans = _cert(files.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    given = make_superlink_certs(tmp_path / "b", ["127.0.0.1", "fl.example.org"])
    sans = _cert(given.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_make_node_key_writes_a_pair_flower_loads(tmp_path: Path) -> None:
    files = make_node_key(tmp_path / "keys", "org-a")
    assert files == NodeKeyFiles(tmp_path / "keys/org-a.key", tmp_path / "keys/org-a.pub")
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["org-a.key", "org-a.pub"]
    private, public = _ec_private(files.private), _ec_public(files.public)
    assert isinstance(private.curve, ec.SECP384R1)
    assert private.public_key() == public  # the .pub is this key's
    assert files.public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert files.public.read_text().endswith(" fedllm-org-a\n")
    assert stat.S_IMODE(files.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.public.stat().st_mode) == 0o644
    assert make_node_key(tmp_path / "default").private.name == "node.key"
    with pytest.raises(FileExistsError, match=r"org-a\.pub exists"):
        make_node_key(tmp_path / "keys", "org-a")
    again = make_node_key(tmp_path / "keys", "org-a", overwrite=True)
    assert _ec_public(again.public) != public


@pytest.mark.parametrize("name", ["../escape", ".hidden", "", "a/b", "x" * 65])
def test_make_node_key_refuses_a_name_that_is_not_a_client_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"key name .* is not a client name: use 1-64"):
        make_node_key(tmp_path / "keys", name)
    assert not (tmp_path / "keys").exists()


def test_fedllm_certs_node_says_only_the_pub_leaves_the_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "node"
    assert main(["certs", "node", str(out), "--name", "org-b"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["org-b.key", "org-b.pub"]
    assert _ec_private(out / "org-b.key").public_key() == _ec_public(out / "org-b.pub")
    err = capsys.readouterr().err
    assert "org-b.key: this node's private key" in err and "never leaves this machine" in err
    assert "org-b.pub: only this file leaves this machine" in err
    assert "flwr supernode register org-b.pub" in err
    assert main(["certs", "node", str(out), "--name", "org-b"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["certs", "node", str(out), "--name", "../x"]) == 2
    assert "is not a client name: use 1-64 letters" in capsys.readouterr().err


def _node_pub(tmp_path: Path, name: str) -> Path:
    return make_node_key(tmp_path / "nodes", name).public


def test_write_roster_holds_each_clients_key_in_canonical_form(tmp_path: Path) -> None:
    a, b = _node_pub(tmp_path, "org-a"), _node_pub(tmp_path, "org-b")
    pem = tmp_path / "org-b.pem"  # the same key as PEM is accepted
    pem.write_bytes(
        _ec_public(b).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    roster = write_roster(tmp_path / "out/roster.toml", {"org-a": a, "org-b": pem})
    assert load_roster(roster) == {"org-a": _ec_public(a), "org-b": _ec_public(b)}
    assert "fedllm-org-a" not in roster.read_text()  # the sender's comment is dropped
    assert stat.S_IMODE(roster.stat().st_mode) == 0o644
    with pytest.raises(FileExistsError, match=r"roster\.toml exists"):
        write_roster(roster, {"org-a": a})
    write_roster(roster, {"org-a": a}, overwrite=True)
    assert list(load_roster(roster)) == ["org-a"]


def test_write_roster_refuses_what_is_not_a_node_public_key(tmp_path: Path) -> None:
    pub = _node_pub(tmp_path, "org-a")
    private = pub.with_suffix(".key")
    pem_private = tmp_path / "pkcs8.pem"
    pem_private.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ed25519 = tmp_path / "ed.pub"
    ed25519.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    junk = tmp_path / "junk.pub"
    junk.write_text("hello\n")
    cases = [
        ({"org-a": private}, r"org-a\.key \(client 'org-a'\) holds a PRIVATE key"),
        ({"org-a": pem_private}, r"pkcs8\.pem \(client 'org-a'\) holds a PRIVATE key"),
        ({"org-a": ed25519}, r"ed\.pub \(client 'org-a'\) is not an elliptic-curve public key"),
        ({"org-a": junk}, r"junk\.pub \(client 'org-a'\) is not an elliptic-curve public key"),
        ({"org-a": tmp_path / "none.pub"}, r"none\.pub \(client 'org-a'\) is missing"),
        ({"org-a": tmp_path}, r"\(client 'org-a'\) is missing or not a file"),
        ({"bad name": pub}, r"client id 'bad name' is not a client name: use 1-64 letters"),
        ({"../x": pub}, r"client id '../x' is not a client name"),
        ({"org-a": pub, "org-b": pub}, r"\(client 'org-b'\) holds the same public key as .*"),
        ({}, r"no clients"),
    ]
    out = tmp_path / "roster.toml"
    for keys, message in cases:
        with pytest.raises(ValueError, match=message):
            write_roster(out, keys)
        assert not out.exists()


def test_the_same_key_as_openssh_and_as_pem_is_still_one_key(tmp_path: Path) -> None:
    pub = _node_pub(tmp_path, "org-a")
    pem = tmp_path / "org-a.pem"
    pem.write_bytes(
        _ec_public(pub).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ValueError, match=r"org-a\.pem \(client 'org-b'\) holds the same"):
        write_roster(tmp_path / "roster.toml", {"org-a": pub, "org-b": pem})


def test_client_key_files_refuses_a_name_given_twice_and_bad_items() -> None:
    assert client_key_files(["a=x.pub", "b=dir/y=z.pub"]) == {
        "a": Path("x.pub"),
        "b": Path("dir/y=z.pub"),
    }
    with pytest.raises(ValueError, match=r"client 'a' is given twice \(x\.pub and y\.pub\)"):
        client_key_files(["a=x.pub", "a=y.pub"])
    for item in ("a", "=x.pub", "a="):
        with pytest.raises(ValueError, match=r"need CLIENT=PUBKEY_FILE"):
            client_key_files([item])


def test_fedllm_certs_roster_from_public_keys_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _node_pub(tmp_path, "org-a"), _node_pub(tmp_path, "org-b")
    out = tmp_path / "roster.toml"
    args = ["certs", "roster", str(out), "--client", f"org-a={a}", "--client", f"org-b={b}"]
    assert main(args) == 0
    assert load_roster(out) == {"org-a": _ec_public(a), "org-b": _ec_public(b)}
    assert "give the same file to the server and every node" in capsys.readouterr().err
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    bad = [
        (["--client", f"org-a={a.with_suffix('.key')}"], "holds a PRIVATE key"),
        (["--client", f"org-a={a}", "--client", f"org-a={b}"], "'org-a' is given twice"),
        (["--client", f"org-a={a}", "--client", f"org-b={a}"], "holds the same public key"),
        (["--client", f"bad!name={a}"], "is not a client name: use 1-64 letters"),
        (["--client", str(a)], "need CLIENT=PUBKEY_FILE"),
    ]
    for extra, message in bad:
        assert main(["certs", "roster", str(tmp_path / "r2.toml"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r2.toml").exists()


def test_the_old_certs_form_is_gone() -> None:
    with pytest.raises(SystemExit):
        main(["certs", "out", "--nodes", "2"])


# Writing keys safely: no symlinks followed, nothing but regular files, private folders.


@pytest.mark.parametrize("link", ["node.pub", "node.key"])
def test_overwrite_refuses_a_symlink_and_leaves_its_target_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    out = tmp_path / "node"
    make_node_key(out)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"someone else's file")
    victim.chmod(0o664)
    (out / link).unlink()
    (out / link).symlink_to(victim)
    others = {p.name: p.read_bytes() for p in out.iterdir() if p.name != link}
    with pytest.raises(ValueError, match=rf"{re.escape(link)} is a symbolic link"):
        make_node_key(out, overwrite=True)
    assert main(["certs", "node", str(out), "--overwrite"]) == 2
    assert f"{link} is a symbolic link" in capsys.readouterr().err
    assert victim.read_bytes() == b"someone else's file"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o664
    assert (out / link).is_symlink()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != link} == others


def test_write_key_file_does_not_follow_a_symlink_even_past_the_checks(tmp_path: Path) -> None:
    """The race the up-front checks cannot close: a link that appears just before the
    write is refused by O_NOFOLLOW itself."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep")
    victim.chmod(0o664)
    (tmp_path / "ca.crt").symlink_to(victim)
    for overwrite in (True, False):
        with pytest.raises((ValueError, FileExistsError)):
            write_key_file(tmp_path / "ca.crt", b"new", private=True, overwrite=overwrite)
    with pytest.raises(ValueError, match=r"ca\.crt is a symbolic link"):
        write_key_file(tmp_path / "ca.crt", b"new", private=True, overwrite=True)
    assert victim.read_bytes() == b"keep"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o664


def test_write_key_file_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    folder = tmp_path / "a.key"
    folder.mkdir()
    fifo = tmp_path / "b.key"
    os.mkfifo(fifo)
    original = tmp_path / "original"
    original.write_bytes(b"keep")
    hard = tmp_path / "c.key"
    os.link(original, hard)
    for path in (folder, fifo, hard):
        with pytest.raises(ValueError, match=r"is (not a regular file|a file with other names)"):
            write_key_file(path, b"secret", private=True, overwrite=True)
    assert original.read_bytes() == b"keep"
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out/ca.crt")  # refused up front, before anything is written
    with pytest.raises(ValueError, match=r"ca\.crt is not a regular file"):
        make_superlink_certs(tmp_path / "out", ["127.0.0.1"], overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ca.crt"]


def test_an_existing_output_folder_is_tightened_to_0700(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    make_node_key(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    shared = tmp_path / "superlink"
    shared.mkdir()
    shared.chmod(0o777)
    make_superlink_certs(shared, ["127.0.0.1"])
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700


def test_an_output_folder_that_is_a_link_a_file_or_anothers_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    real.chmod(0o755)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ValueError, match=r"link is a symbolic link"):
        make_node_key(tmp_path / "link")
    assert list(real.iterdir()) == [] and stat.S_IMODE(real.stat().st_mode) == 0o755
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"file is not a folder"):
        make_superlink_certs(tmp_path / "file", ["127.0.0.1"])
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    with pytest.raises(ValueError, match=rf"real belongs to user id {uid}, not to you"):
        make_node_key(real)
    assert list(real.iterdir()) == [] and stat.S_IMODE(real.stat().st_mode) == 0o755


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_modes_are_the_same_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        files = make_certs(tmp_path / "certs", nodes=1, clients=("org-a",))
        node = make_node_key(tmp_path / "node")
        assert files.roster is not None
        roster = write_roster(tmp_path / "roster.toml", {"org-a": node.public})
    finally:
        os.umask(old)
    for path in (*files.private_keys, node.private):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (files.ca_cert, files.server_cert, *files.node_public_keys, files.roster):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(node.public.stat().st_mode) == 0o644
    assert stat.S_IMODE(roster.stat().st_mode) == 0o644
    for folder in (tmp_path / "certs", tmp_path / "node"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_the_longest_validity_is_accepted(tmp_path: Path) -> None:
    files = make_superlink_certs(tmp_path, ["127.0.0.1"], days=MAX_DAYS)
    cert = _cert(files.server_cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > datetime.timedelta(MAX_DAYS)
    with pytest.raises(ValueError, match=r"days = 3651: need a whole number of days from 1"):
        make_superlink_certs(tmp_path / "x", ["127.0.0.1"], days=MAX_DAYS + 1)
    assert not (tmp_path / "x").exists()
