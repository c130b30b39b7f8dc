"""Where a deployment's nodes hold authentication keys, SecAgg+ is built signed.

``secagg.roster`` (Flower only) names a roster of client id -> node public key that
``fedllm certs --client`` writes; each node signs with its ``auth-key`` (node config)
and verifies against the roster, the server verifies too; without a roster every side
is built unsigned. The banner then states the signed threat model. Bad settings are
refused at config load, a missing file or key at run start, with the fix named.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedllm.cli import main
from fedllm.client.side import ClientSide
from fedllm.composition import Algorithm, AlgorithmSetup
from fedllm.config import Config, ConfigError
from fedllm.deploy.certs import CertFiles, make_certs
from fedllm.deploy.launch import run_on_flower
from fedllm.deploy.local import DeployError
from fedllm.federation.guarantees import privacy_banner
from fedllm.secure.keys import load_node_key
from fedllm.secure.roster import load_roster, parse_roster, roster_toml
from fedllm.secure.secagg import SecAgg
from fedllm.secure.secagg import client as client_secagg
from fedllm.secure.secagg.params import threat_model
from fedllm.secure.secagg.server import SecAggExchange
from tests.support.runs import tiny_config

CLIENTS = ("ana", "bo", "cy", "dee")
SECAGG = ("secagg.enabled=true", "server.weighting='uniform'", "server.clients_per_round=4")
FLOWER = ("runtime.engine='flower'",)


def _ssh(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _certs(tmp_path: Path) -> CertFiles:
    return make_certs(tmp_path / "certs", len(CLIENTS), clients=CLIENTS)


def _signed_config(roster: Path | str) -> Config:
    return tiny_config(*SECAGG, *FLOWER, f"secagg.roster='{roster}'")


class Recorded(client_secagg.SecAggClientPhases):
    """The client phases as the algorithm builds them, kept to look at."""

    built: list[Recorded] = []  # noqa: RUF012 (a test's record)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Recorded.built.append(self)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    Recorded.built = []
    monkeypatch.setattr(client_secagg, "SecAggClientPhases", Recorded)
    return Recorded.built


def _build(
    config: Config, clients: Mapping[str, int], partial: bool, node: Mapping[str, str]
) -> Algorithm:
    """The SecAgg algorithm as a Flower node (``partial``) or the server builds it."""
    ws = cast(Any, SimpleNamespace(config=config))
    setup = AlgorithmSetup(ws, "federated", clients, cast(Any, None), {}, partial, dict(node))
    algorithm = SecAgg().build(setup)
    assert algorithm is not None
    return algorithm


def _client_phases(algorithm: Algorithm, recorded: list[Recorded]) -> Recorded:
    assert algorithm.client_phases is not None
    algorithm.client_phases(cast(ClientSide, None))
    return recorded[-1]


def test_fedllm_certs_roster_holds_the_keys_the_nodes_made(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"  # each client's node makes its own pair; only .pub travels
    for client in CLIENTS:
        assert main(["certs", "node", str(nodes / client), "--name", client]) == 0
    out = tmp_path / "certs"
    names = [arg for c in CLIENTS for arg in ("--client", f"{c}={nodes / c / c}.pub")]
    assert main(["certs", "roster", str(out / "roster.toml"), *names]) == 0
    roster = load_roster(out / "roster.toml")
    assert list(roster) == sorted(CLIENTS)
    for client in CLIENTS:  # a node's key answers for its client
        node_key = load_node_key((nodes / client / f"{client}.key").read_bytes())
        assert _ssh(roster[client]) == _ssh(node_key.public_key())
    assert oct((out / "roster.toml").stat().st_mode & 0o777) == "0o644"
    make_certs(out, len(CLIENTS), clients=CLIENTS, overwrite=True)
    assert (out / "roster.toml").exists()
    # new keys without names: the old roster, naming keys that are gone, goes too
    make_certs(out, 2, overwrite=True)
    assert not (out / "roster.toml").exists()
    with pytest.raises(ValueError, match="one distinct client id per node"):
        make_certs(tmp_path / "other", 2, clients=["a", "a"])
    with pytest.raises(ValueError, match="one distinct client id per node"):
        make_certs(tmp_path / "other", 2, clients=["a"])


def test_a_roster_takes_openssh_and_pem_keys_and_refuses_anything_else() -> None:
    keys = {c: ec.generate_private_key(ec.SECP384R1()).public_key() for c in ("a", "b")}
    pem = keys["b"].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    roster = parse_roster(roster_toml({"a": _ssh(keys["a"]), "b": pem}))
    assert {c: _ssh(k) for c, k in roster.items()} == {c: _ssh(k) for c, k in keys.items()}
    with pytest.raises(ValueError, match=r"no \[clients\] table"):
        parse_roster("a = 1\n")
    with pytest.raises(ValueError, match="key of client 'a' is not an elliptic-curve"):
        parse_roster('[clients]\na = "ssh-ed25519 AAAA nonsense"\n')
    with pytest.raises(ValueError, match="not TOML"):
        parse_roster("[clients\n")


def test_nodes_with_keys_build_signed_client_phases_and_the_server_the_roster(
    tmp_path: Path, recorded: list[Recorded]
) -> None:
    certs = _certs(tmp_path)
    assert certs.roster is not None
    config = _signed_config(certs.roster)
    for i, client in enumerate(CLIENTS):
        node = {"partition-id": str(i), "auth-key": str(certs.node_keys[i])}
        phases = _client_phases(_build(config, {client: 10}, True, node), recorded)
        assert phases.signer is not None and phases.roster is not None
        assert set(phases.roster) == set(CLIENTS)
        assert _ssh(phases.signer.public_key()) == _ssh(phases.roster[client])
    server = _build(config, dict.fromkeys(CLIENTS, 10), False, {})
    assert isinstance(server.exchange, SecAggExchange)
    roster = server.exchange.settings.roster
    assert roster is not None and set(roster) == set(CLIENTS)
    assert threat_model(signed=True) in privacy_banner(config)
    assert threat_model(signed=False) not in privacy_banner(config)


def test_without_a_roster_every_side_is_built_unsigned(
    tmp_path: Path, recorded: list[Recorded]
) -> None:
    certs = _certs(tmp_path)
    config = tiny_config(*SECAGG, *FLOWER)  # the nodes hold keys; no roster: unsigned
    node = {"partition-id": "0", "auth-key": str(certs.node_keys[0])}
    phases = _client_phases(_build(config, {"ana": 10}, True, node), recorded)
    assert phases.signer is None and phases.roster is None
    server = _build(config, dict.fromkeys(CLIENTS, 10), False, {})
    assert isinstance(server.exchange, SecAggExchange)
    assert server.exchange.settings.roster is None
    assert threat_model(signed=False) in privacy_banner(config)
    assert threat_model(signed=False) in privacy_banner(tiny_config(*SECAGG))


def test_a_roster_is_refused_at_load_without_secagg_or_off_flower() -> None:
    with pytest.raises(ConfigError, match="set secagg.enabled = true, or remove secagg.roster"):
        tiny_config(*FLOWER, "secagg.roster='roster.toml'")
    with pytest.raises(ConfigError, match="set runtime.engine = 'flower', or remove"):
        tiny_config(*SECAGG, "secagg.roster='roster.toml'")
    assert _signed_config("roster.toml").secagg.roster == "roster.toml"  # read at run start


def test_a_missing_roster_key_or_client_is_refused_at_run_start(
    tmp_path: Path, recorded: list[Recorded], caplog: pytest.LogCaptureFixture
) -> None:
    certs = _certs(tmp_path)
    assert certs.roster is not None
    missing = _signed_config(tmp_path / "nowhere.toml")
    for partial in (True, False):
        with pytest.raises(ConfigError, match=r"cannot be read .*fedllm certs roster"):
            _build(missing, {"ana": 10}, partial, {"auth-key": str(certs.node_keys[0])})
    config = _signed_config(certs.roster)
    with pytest.raises(ConfigError, match="no auth-key: start flower-supernode"):
        _build(config, {"ana": 10}, True, {"partition-id": "0"})
    with pytest.raises(ConfigError, match="auth-key = .* cannot be read"):
        _build(config, {"ana": 10}, True, {"auth-key": str(tmp_path / "none.key")})
    with pytest.raises(ConfigError, match=r"no key for client\(s\) \['eve'\]"):
        _build(config, {**dict.fromkeys(CLIENTS, 10), "eve": 10}, False, {})
    # a node holding another node's key is told; the protocol refuses its keys
    with caplog.at_level(logging.WARNING):
        _build(config, {"ana": 10}, True, {"auth-key": str(certs.node_keys[1])})
    assert "not the roster's key for client 'ana'" in caplog.text


def test_the_loopback_deployment_of_fedllm_run_refuses_a_roster(tmp_path: Path) -> None:
    config = _signed_config(tmp_path / "roster.toml")
    with pytest.raises(DeployError, match="has no node keys: run on your SuperLink"):
        run_on_flower(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
