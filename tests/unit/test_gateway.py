"""The fleet gateway forwards the Fleet API's calls and nothing else.

Everything that is not a plain ``POST /v1/fleet/<call>`` is answered 403 without the
SuperLink being contacted (its upstream here is a port nothing listens on, so a
forwarded request would come back 502): the Control API (register keys, submit runs),
the Runtime API (take the ServerApp's task), and the spellings that would reach them
through a path normaliser.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fedllm.cli import main
from fedllm.deploy.gateway import FLEET_PATHS, FleetGateway, address, refusal
from fedllm.deploy.local import free_port


def _scope(
    path: str, method: str = "POST", raw: bytes | None = None, query: bytes = b""
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode() if raw is None else raw,
        "query_string": query,
        "headers": [(b"content-type", b"application/protobuf")],
    }


def _call(app: FleetGateway, scope: dict[str, Any], body: bytes = b"") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(e.get("body", b"") for e in sent[1:])


REFUSED = [
    _scope("/v1/control/start-run"),
    _scope("/v1/control/list-runs"),
    _scope("/v1/runtime/acquire-task"),
    _scope("/health"),
    _scope("/docs", "GET"),
    _scope("/v1/fleet/../control/start-run"),
    _scope("/v1/fleet/pull-messages/../../control/start-run"),
    _scope("/v1/fleet/pull-messages", raw=b"/v1/fleet/pull%2Dmessages"),
    _scope("/v1/fleet/pull-messages", raw=b"/v1/fleet/./pull-messages"),
    _scope("/v1/fleet/pull-messages", "GET"),
    _scope("/v1/fleet/pull-messages", query=b"x=1"),
    _scope("/v1/fleet/pull-messages/"),
    _scope("//v1/fleet/pull-messages"),
]


@pytest.mark.parametrize(
    "scope", REFUSED, ids=[f"{s['method']} {s['raw_path']!r}" for s in REFUSED]
)
def test_anything_but_a_plain_fleet_call_is_refused_without_reaching_the_superlink(
    scope: dict[str, Any],
) -> None:
    assert refusal(scope) is not None
    gateway = FleetGateway(f"http://127.0.0.1:{free_port()}", False, timeout_s=2)
    status, body = _call(gateway, scope)
    assert status == 403
    assert json.loads(body)["detail"].startswith("refused by the fleet gateway")


def test_every_fleet_call_is_forwarded() -> None:
    assert len(FLEET_PATHS) == 12
    gateway = FleetGateway(f"http://127.0.0.1:{free_port()}", False, timeout_s=2)
    for path in sorted(FLEET_PATHS):
        assert refusal(_scope(path)) is None
    status, body = _call(gateway, _scope("/v1/fleet/pull-messages"))  # nothing upstream
    assert status == 502 and b"did not answer" in body


def test_a_body_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fedllm.deploy.gateway.MAX_BODY_BYTES", 10)
    gateway = FleetGateway(f"http://127.0.0.1:{free_port()}", False, timeout_s=2)
    assert _call(gateway, _scope("/v1/fleet/push-object"), b"x" * 11)[0] == 413


def test_listen_addresses() -> None:
    assert address("0.0.0.0:9092") == ("0.0.0.0", 9092)
    assert address("[::]:9092") == ("::", 9092)
    for bad in ("9092", "host:", "host:0", "host:70000", ":9092"):
        with pytest.raises(ValueError, match="is not host:port"):
            address(bad)


def test_fedllm_gateway_refuses_a_bad_address_or_missing_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gateway", "--listen", "0.0.0.0", "--superlink-port", "9093", "--insecure"]) == 2
    assert "is not host:port" in capsys.readouterr().err
    args = ["gateway", "--listen", "0.0.0.0:9092", "--superlink-port", "9093"]
    assert main([*args, "--certs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "superlink.crt" in err and "fedllm certs superlink" in err
