"""The fleet gateway: the one SuperLink port a federation exposes, serving the Fleet API only.

In flwr 1.42 a SuperLink serves every API on one HTTP port: the Fleet API its
SuperNodes use, but also the Control API (register node keys, submit runs, read
them; no account authentication) and the Runtime API its ServerApp works through.
Anyone who reaches that port with ``ca.crt`` could register a node of their own,
submit an app that runs on every node, or take the ServerApp's task. So fedllm binds
the SuperLink to 127.0.0.1 on the operator's machine and puts this gateway on the
network address: it forwards exactly the Fleet API's requests (``POST`` to one of
:data:`FLEET_PATHS`, no query string, the path spelled plainly) to the SuperLink and
answers everything else 403 without contacting it.

The gateway serves TLS with the SuperLink's certificate and checks the SuperLink's
(on 127.0.0.1) against the CA; SuperNode authentication passes through untouched (the
node's signature headers are forwarded as they came).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

FLEET_CALLS = (
    "register-node",
    "activate-node",
    "deactivate-node",
    "unregister-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
)
"""The Fleet API's calls in flwr 1.42 (``flwr/superlink/routers/fleet/router.py``)."""

FLEET_PATHS = frozenset(f"/v1/fleet/{call}" for call in FLEET_CALLS)
"""The only paths forwarded."""

MAX_BODY_BYTES = 64 * 2**20
"""Largest request forwarded (bytes): Flower sends objects in chunks of at most 5 MiB."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
"""Headers that describe one connection, not the request: not forwarded either way."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def refusal(scope: Scope) -> str | None:
    """Why the gateway does not forward this request; None for a Fleet API call."""
    method, path = scope.get("method"), scope.get("path", "")
    raw = scope.get("raw_path")
    if path not in FLEET_PATHS:
        return f"{path!r} is not a Fleet API call: this port serves SuperNodes only"
    if raw is not None and raw != path.encode():
        return "the path must be spelled plainly (no escapes, no dot segments)"
    if method != "POST":
        return f"the Fleet API takes POST, not {method}"
    if scope.get("query_string"):
        return "the Fleet API takes no query string"
    return None


class FleetGateway:
    """An ASGI app forwarding Fleet API calls to ``upstream`` and refusing the rest.

    Args:
        upstream: the SuperLink's base URL on this machine (``https://127.0.0.1:9093``).
        verify: how the SuperLink's certificate is checked (an SSL context trusting the
            CA), or False for a plaintext SuperLink.
        timeout_s: how long one forwarded call may take (seconds).
    """

    def __init__(
        self, upstream: str, verify: ssl.SSLContext | bool, timeout_s: float = 120.0
    ) -> None:
        self.upstream = upstream
        self.verify = verify
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        why = refusal(scope)
        if why is not None:
            await _answer(send, 403, {"detail": f"refused by the fleet gateway: {why}"})
            return
        body = await _body(receive)
        if body is None:
            await _answer(send, 413, {"detail": f"request over {MAX_BODY_BYTES} bytes"})
            return
        import httpx

        try:
            reply = await self.client().post(
                self.upstream + scope["path"], content=body, headers=_forwarded(scope["headers"])
            )
        except httpx.HTTPError as err:
            await _answer(send, 502, {"detail": f"the SuperLink did not answer: {err}"})
            return
        out = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in reply.headers.multi_items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"
        ]
        out.append((b"content-length", str(len(reply.content)).encode()))
        await send({"type": "http.response.start", "status": reply.status_code, "headers": out})
        await send({"type": "http.response.body", "body": reply.content})

    def client(self) -> httpx.AsyncClient:
        """The connection pool to the SuperLink (made on first use)."""
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(verify=self.verify, timeout=self.timeout_s)
        return self._client

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _forwarded(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The request's headers minus the hop-by-hop ones (and any compression request:
    the body is relayed as the SuperLink sent it)."""
    kept = []
    for name, value in headers:
        key = name.decode("latin-1").lower()
        if key not in HOP_BY_HOP and key != "accept-encoding":
            kept.append((key, value.decode("latin-1")))
    return kept


async def _body(receive: Receive) -> bytes | None:
    """The whole request body; None once it exceeds :data:`MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return b"".join(chunks)
        piece = event.get("body", b"")
        size += len(piece)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(piece)
        if not event.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, payload: Mapping[str, str]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def upstream_verify(ca: Path | None) -> ssl.SSLContext | bool:
    """Checking the SuperLink against ``ca`` (PEM); False where it serves plaintext."""
    return False if ca is None else ssl.create_default_context(cafile=str(ca))


def serve_gateway(
    listen_host: str,
    listen_port: int,
    superlink_port: int,
    certs: tuple[Path, Path, Path] | None,
) -> None:
    """Serve the gateway on ``listen_host:listen_port`` (blocks) in front of the SuperLink
    at 127.0.0.1:``superlink_port``.

    Args:
        certs: (CA certificate, the SuperLink's certificate, its key), PEM; the gateway
            serves TLS with the certificate and checks the SuperLink against the CA.
            None: plaintext both ways (loopback trials only).
    """
    import uvicorn

    scheme = "http" if certs is None else "https"
    ca = None if certs is None else certs[0]
    app = FleetGateway(f"{scheme}://127.0.0.1:{superlink_port}", upstream_verify(ca))
    uvicorn.run(
        app,
        host=listen_host,
        port=listen_port,
        ssl_certfile=None if certs is None else str(certs[1]),
        ssl_keyfile=None if certs is None else str(certs[2]),
        log_level="warning",
        access_log=False,
        server_header=False,
    )


def address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port).

    Raises:
        ValueError: no port, or a port outside 1-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port (e.g. 0.0.0.0:9092, [::]:9092)")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    """``python -m fedllm.deploy.gateway --listen HOST:PORT --superlink-port P
    (--certs DIR | --insecure)``: serve until stopped."""
    import argparse

    parser = argparse.ArgumentParser(prog="fedllm gateway", description=__doc__)
    add_gateway_arguments(parser)
    args = parser.parse_args(argv)
    run_gateway(args)
    return 0


def add_gateway_arguments(parser: Any) -> None:
    """The gateway's command-line arguments (``fedllm gateway`` and ``-m``)."""
    parser.add_argument(
        "--listen",
        required=True,
        help="host:port to serve the Fleet API on (the address SuperNodes reach)",
    )
    parser.add_argument(
        "--superlink-port",
        type=int,
        required=True,
        help="the port of the SuperLink on 127.0.0.1 (flower-superlink --host 127.0.0.1)",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--certs",
        type=Path,
        help="the folder of `fedllm certs superlink`: ca.crt, superlink.crt, superlink.key",
    )
    mode.add_argument("--insecure", action="store_true", help="plaintext (loopback trials only)")


def run_gateway(args: Any) -> None:
    """Serve the gateway the parsed arguments describe (blocks).

    Raises:
        ValueError: a bad ``--listen`` or ``--superlink-port``, or a certificate missing.
    """
    host, port = address(args.listen)
    if not 1 <= args.superlink_port <= 65535:
        raise ValueError(f"--superlink-port {args.superlink_port}: need a port, 1-65535")
    certs = None
    if args.certs is not None:
        certs = (args.certs / "ca.crt", args.certs / "superlink.crt", args.certs / "superlink.key")
        missing = [str(path) for path in certs if not path.is_file()]
        if missing:
            raise ValueError(
                f"--certs {args.certs}: missing {', '.join(missing)} (`fedllm certs superlink` "
                "writes them)"
            )
    serve_gateway(host, port, args.superlink_port, certs)


if __name__ == "__main__":
    import sys

    sys.exit(main())
