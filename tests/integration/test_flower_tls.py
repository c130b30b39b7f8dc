"""A TLS, node-authenticated loopback deployment: TLS only, registered nodes only.

The SuperLink answers HTTPS checked against the deployment's own CA and nothing in
plaintext; a SuperNode whose key was never registered is refused and exits while the
registered one stays online; every process is gone afterwards.
"""

from __future__ import annotations

import http.client
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedllm.deploy.certs import make_certs, make_node_key
from fedllm.deploy.local import (
    DeployError,
    LocalDeployment,
    connection_to,
    connection_toml,
    json_answer,
    local_deployment,
    node_status,
    register_node,
    security_flags,
    submit,
    wait_for_nodes,
)
from tests.support.processes import process_groups_alive
from tests.support.runs import tiny_config

FLOWER_AUTH_FAILED = 305  # flower-supernode's log: "Failed to initialize the connection"


def _https_status(port: int, context: ssl.SSLContext) -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status
    finally:
        connection.close()


def _plaintext_status(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status
    finally:
        connection.close()


def test_secure_deployment_speaks_tls_only_and_admits_only_registered_nodes(
    tmp_path: Path,
) -> None:
    with local_deployment(1, home=tmp_path / "home", secure=True) as deployment:
        groups = set(deployment.pids)
        assert deployment.certs is not None and len(deployment.node_ids) == 1
        port = int(deployment.superlink.rsplit(":", 1)[1])

        trusted = ssl.create_default_context(cafile=deployment.certs.ca_cert)
        assert 200 <= _https_status(port, trusted) < 500  # an HTTP answer, over TLS
        with pytest.raises(ssl.SSLCertVerificationError):  # the system CAs don't vouch for it
            _https_status(port, ssl.create_default_context())
        with pytest.raises((http.client.HTTPException, ConnectionResetError)):
            _plaintext_status(port)  # the TLS server hangs up on plaintext HTTP

        registered = deployment.node_ids[0]
        assert node_status(deployment) == {registered: "online"}

        intruder_keys = make_certs(tmp_path / "intruder", nodes=1)  # never registered
        intruder = deployment.start_supernode(1, key=intruder_keys.node_keys[0])
        groups.add(intruder.pid)
        assert intruder.wait(timeout=60) != 0
        assert f"Exit Code: {FLOWER_AUTH_FAILED}" in deployment.log_tail(intruder)
        assert "Failed to activate SuperNode" in deployment.log_tail(intruder)
        refusals = [
            line
            for line in (deployment.home / "superlink.log").read_text().splitlines()
            if "activate-node" in line and "No SuperNode found with the given public key" in line
        ]
        assert len(refusals) == 1
        assert node_status(deployment) == {registered: "online"}
        with pytest.raises(DeployError, match=r"(?s)SuperNode exited.*Failed to activate"):
            wait_for_nodes(deployment, deployment.node_ids, timeout_s=10)
        not_a_key = tmp_path / "not-a-key.pub"
        not_a_key.write_text("ssh-rsa AAAA nonsense\n")
        with pytest.raises(DeployError, match=r"(?s)registering .*not-a-key\.pub.*flwr said"):
            register_node(deployment, not_a_key)
    assert process_groups_alive(groups) == []


def test_insecure_and_secure_flags_and_connections(tmp_path: Path) -> None:
    plain = LocalDeployment(tmp_path, "127.0.0.1:9999")
    assert security_flags("superlink", None) == ["--insecure"]
    assert security_flags("supernode", None) == ["--insecure"]
    assert connection_toml(plain).endswith('address = "127.0.0.1:9999"\ninsecure = true\n')

    certs = make_certs(tmp_path / "certs", nodes=1)
    secure = LocalDeployment(tmp_path, "127.0.0.1:9999", certs=certs)
    link = security_flags("superlink", certs)
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    for flag, path in [
        ("--ssl-ca-certfile", certs.ca_cert),
        ("--ssl-certfile", certs.server_cert),
        ("--ssl-keyfile", certs.server_key),
    ]:
        assert link[link.index(flag) + 1] == str(path)
    node = security_flags("supernode", certs, certs.node_keys[0])
    assert node == [
        "--root-certificates",
        str(certs.ca_cert),
        "--auth-supernode-private-key",
        str(certs.node_keys[0]),
    ]
    with pytest.raises(ValueError, match="private key"):
        security_flags("supernode", certs)
    text = connection_toml(secure)
    assert "insecure =" not in text
    assert f'root-certificates = "{certs.ca_cert.resolve()}"' in text


def _post(port: int, path: str, context: ssl.SSLContext | None = None) -> int:
    """POST an empty protobuf body (what `curl -X POST` sent in the review)."""
    connection = (
        http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        if context is None
        else http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    )
    try:
        connection.request("POST", path, b"", {"content-type": "application/protobuf"})
        return connection.getresponse().status
    finally:
        connection.close()


def _runtime_port(process: subprocess.Popen[bytes]) -> int:
    argv = list(process.args)  # type: ignore[arg-type]
    return int(argv[argv.index("--port") + 1])


def test_an_outsider_at_the_fleet_port_and_a_local_process_are_refused(tmp_path: Path) -> None:
    """The review's attacks, on loopback: through the only port a secure deployment
    exposes (the fleet gateway), an outsider holding ca.crt cannot register a node key,
    list or submit runs, nor take a task; on the machines, another process cannot take
    the ServerApp's or a ClientApp's task from the Runtime APIs."""
    with local_deployment(1, home=tmp_path / "home", secure=True) as deployment:
        assert deployment.certs is not None
        trusted = ssl.create_default_context(cafile=deployment.certs.ca_cert)
        fleet = int(deployment.fleet.rsplit(":", 1)[1])
        superlink = int(deployment.superlink.rsplit(":", 1)[1])
        assert fleet != superlink
        assert node_status(deployment) == {deployment.node_ids[0]: "online"}  # through it

        outsider = tmp_path / "outsider"
        outsider.mkdir()
        (outsider / "config.toml").write_text(
            connection_to(deployment.fleet, deployment.certs.ca_cert)
        )
        intruder = make_node_key(tmp_path / "intruder-key", "intruder")
        env = {**deployment.env(), "FLWR_HOME": str(outsider)}
        for args in (
            ["supernode", "register", str(intruder.public), "local", "--format", "json"],
            ["ls", "local", "--format", "json"],
        ):
            done = subprocess.run(["flwr", *args], env=env, capture_output=True, text=True)
            assert not json_answer(done.stdout).get("success"), done.stdout
        operator = deployment.flwr("ls", "local", "--format", "json")  # 127.0.0.1: all APIs
        assert json_answer(operator.stdout).get("success"), operator.stdout
        assert len(node_status(deployment)) == 1  # no key was registered
        for path in ("/v1/control/start-run", "/v1/control/list-runs", "/v1/runtime/acquire-task"):
            assert _post(fleet, path, trusted) == 403
        assert _post(fleet, "/v1/fleet/../control/list-runs", trusted) == 403

        assert _post(superlink, "/v1/runtime/acquire-task", trusted) == 401
        node_runtime = _runtime_port(deployment.supernodes[0])
        assert _post(node_runtime, "/v1/runtime/acquire-task") == 401

        private = [deployment.home, deployment.home / "secrets", *deployment.state_dirs]
        assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in private} == {"0o700"}
        secrets = list((deployment.home / "secrets").iterdir())
        assert len(secrets) == 2  # the SuperLink's and the node's
        assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in secrets} == {"0o600"}


def test_flowers_app_verification_refuses_every_app_submitted_from_a_folder(
    tmp_path: Path,
) -> None:
    """flwr 1.42's SuperNode ``--trusted-entities`` accepts only apps fetched from
    Flower Hub with its signatures (``valid_license``); an app submitted from a folder,
    as fedllm's is, carries none, so such a node answers every message with an error.
    Hence docs/deploy.md: a node cannot check which app it runs; the fleet gateway
    keeps the Control API, where apps are submitted, off the network instead."""
    signer = Ed25519PrivateKey.generate().public_key()
    line = signer.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    trusted = tmp_path / "trusted.yaml"
    trusted.write_text(f"fpk_fedllm: '{line.decode()} operator'\n")
    config = tiny_config("runtime.engine='flower'", "data.num_clients=1", "server.rounds=1")
    with local_deployment(0, home=tmp_path / "home") as deployment:
        node = deployment.start_supernode(0, flags=["--trusted-entities", str(trusted)])
        settings = {"out": str(tmp_path / "run"), "nodes": 1}
        with pytest.raises(DeployError, match=r"0 of 1 clients answered"):
            submit(deployment, config, settings, timeout_s=300)
        assert "App verification is not supported" in deployment.log_tail(node, 20000)
