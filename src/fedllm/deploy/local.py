"""A Flower deployment on this machine: a SuperLink and N SuperNodes on loopback.

``run_local`` starts them on free ports with a private ``FLWR_HOME``, submits the
fedllm app (``flwr run``), waits for the run to finish and stops every process
it started, also on failure and Ctrl-C. Node ``i`` answers for the ``i``-th client
of the configuration (sorted ids) and keeps its client state in its own folder.

``secure=True`` starts the same deployment with TLS and SuperNode authentication:
certificates and node keys made in the deployment's folder (``certs/``, see
``fedllm.deploy.certs``), every node's public key registered with the SuperLink before
the node starts, and the deployment handed over only once every node is online. Each
node's config names its key (``auth-key``), which SecAgg+ signs with where the run has
a roster (``clients`` writes one: ``certs/roster.toml``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from fedllm.config import Config, dump_config
from fedllm.deploy.certs import CertFiles, make_certs
from fedllm.deploy.certs import private_folder as make_private_folder
from fedllm.deploy.link import remove_stale_sockets
from fedllm.federation.rundir import FLOWER_DONE

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedllmapp"
version = "1.0.0"
description = "fedllm on Flower"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedllm"

[tool.flwr.app.components]
serverapp = "fedllm.deploy.apps:server_app"
clientapp = "fedllm.deploy.node_app:client_app"

[tool.flwr.app.config]
config = ""
out = ""
nodes = 1
token = ""
resume-rounds = 0
"""

CONNECTION = """\
[superlink]
default = "local"

[superlink.local]
address = "{address}"
"""

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")

QUIET_FLOWER = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


class DeployError(RuntimeError):
    """The deployment did not start, or the run did not finish."""


@dataclass
class LocalDeployment:
    """The processes of a loopback deployment and where they write.

    Attributes:
        home: the deployment's folder (FLWR_HOME, the app, logs, node state).
        superlink: host:port of the SuperLink.
        processes: every process started, SuperLink first.
        logs: the log file of each process, in the same order.
        certs: the TLS certificates and node keys; None for an insecure deployment.
        node_ids: the SuperLink's id for each node registered (secure only), node order.
        state_root: where node ``i`` keeps its client state (``node-<i>``); None: ``home``.
        fleet: host:port the SuperNodes connect to: the fleet gateway (secure: only the
            Fleet API; the SuperLink itself listens on 127.0.0.1) or the SuperLink.
        supernodes: the SuperNode processes, node order.
        state_dirs: each SuperNode's state folder, node order.
    """

    home: Path
    superlink: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    certs: CertFiles | None = None
    node_ids: list[int] = field(default_factory=list)
    state_root: Path | None = None
    fleet: str = ""
    supernodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    state_dirs: list[Path] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, **QUIET_FLOWER, "FLWR_HOME": str(self.home), "PATH": path}

    def start(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own process group, output to ``home/log``."""
        path = self.home / log
        with path.open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )
        self.processes.append(process)
        self.logs.append(path)
        return process

    def start_superlink(self, port: int) -> subprocess.Popen[bytes]:
        """The SuperLink on 127.0.0.1:``port`` (all its APIs), logging to superlink.log.

        It runs its ServerApps in ``process`` isolation: only the SuperExec started with
        :meth:`start_superexec` and the SuperLink's secret may take their tasks.
        """
        return self.start(
            [
                "flower-superlink",
                *security_flags("superlink", self.certs),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
                *isolation_flags(self.secret("superlink")),
            ],
            "superlink.log",
        )

    def start_superexec(
        self, runtime_port: int, name: str, parent: subprocess.Popen[bytes], tls: bool
    ) -> subprocess.Popen[bytes]:
        """The SuperExec that runs the apps of ``parent`` (a SuperLink or SuperNode whose
        Runtime API is on 127.0.0.1:``runtime_port``), authenticated by ``name``'s secret;
        it exits with its parent. ``tls``: the Runtime API serves the CA's certificate."""
        ca = ["--root-certificates", str(self.certs.ca_cert)] if tls and self.certs else []
        return self.start(
            [
                "flower-superexec",
                "--runtime-api-address",
                f"127.0.0.1:{runtime_port}",
                *(ca or ["--insecure"]),
                "--superexec-auth-secret-file",
                str(self.secret(name)),
                "--parent-pid",
                str(parent.pid),
            ],
            f"{name}-superexec.log",
        )

    def start_gateway(self, port: int, superlink_port: int) -> subprocess.Popen[bytes]:
        """The fleet gateway on 127.0.0.1:``port`` in front of the SuperLink (TLS with its
        certificate where the deployment has certificates), logging to gateway.log."""
        mode = ["--insecure"] if self.certs is None else ["--certs", str(self.certs.folder)]
        return self.start(
            [
                sys.executable,
                "-m",
                "fedllm.deploy.gateway",
                "--listen",
                f"127.0.0.1:{port}",
                "--superlink-port",
                str(superlink_port),
                *mode,
            ],
            "gateway.log",
        )

    def secret(self, name: str) -> Path:
        """The SuperExec secret of process ``name`` (32 random bytes, mode 0600, in the
        deployment's private ``secrets/``), made on first use."""
        folder = private_folder(self.home / "secrets")
        path = folder / f"{name}.secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as sink:
                sink.write(secrets.token_bytes(32))
        return path

    def start_supernode(
        self,
        index: int,
        key: Path | None = None,
        node_config: Mapping[str, str] | None = None,
        flags: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """SuperNode ``index`` (``partition-id``) and its SuperExec, logging to
        supernode-<index>.log and node-<index>-superexec.log.

        Args:
            index: the node's partition id; its state lives in ``node-<index>`` (mode
                0700) under ``state_root`` (or ``home``).
            key: its authentication private key (secure only); default: ``node-<index>``'s
                key from ``certs``. Its node config names it too (``auth-key``).
            node_config: entries added to (or replacing) its node config's
                ``partition-id``, ``state-dir`` and ``auth-key``.
            flags: more ``flower-supernode`` arguments.
        """
        if self.certs is not None and key is None:
            key = self.certs.node_keys[index]
        state = private_folder((self.state_root or self.home) / f"node-{index}")
        self.state_dirs.append(state)
        entries = {"partition-id": str(index), "state-dir": json.dumps(str(state))}
        if key is not None:
            entries["auth-key"] = json.dumps(str(key))
        if self.certs is not None and self.certs.roster is not None:
            entries["roster"] = json.dumps(str(self.certs.roster))  # a node reads its own
        entries.update({k: json.dumps(str(v)) for k, v in (node_config or {}).items()})
        runtime_port = free_port()
        node = self.start(
            [
                "flower-supernode",
                *security_flags("supernode", self.certs, key),
                "--superlink",
                self.fleet or self.superlink,
                "--port",
                str(runtime_port),
                *isolation_flags(self.secret(f"node-{index}")),
                *flags,
                "--node-config",
                " ".join(f"{k}={v}" for k, v in entries.items()),
            ],
            f"supernode-{index}.log",
        )
        self.supernodes.append(node)
        if listening(runtime_port, node, timeout_s=60.0):  # else it exited: the caller sees
            self.start_superexec(runtime_port, f"node-{index}", node, tls=False)
        return node

    def log_tail(self, process: subprocess.Popen[bytes], chars: int = 2000) -> str:
        """The last ``chars`` characters of ``process``'s log."""
        log = self.logs[self.processes.index(process)]
        return tail(log.read_text(errors="replace"), chars)

    def flwr(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``flwr ARGS`` against this deployment's FLWR_HOME (output captured, not checked)."""
        return subprocess.run(
            ["flwr", *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout_s,
            check=False,
        )

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every process group started and every group their descendants made
        (Flower's ``flwr-serverapp`` and ``flower-superexec`` start sessions of their
        own, and outlive their parent as orphans), then SIGKILL what is left after
        ``grace_s``; return once none of them runs, then remove the sockets the killed
        node workers left.

        A group whose first process has already exited is stopped too: a SuperNode that
        exits at start (an unregistered key) leaves its SuperExec child running a while.
        """
        groups = {process.pid for process in self.processes}
        groups |= descendant_groups(groups)  # before anyone dies: orphans lose their parent
        for group in groups:
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            groups |= descendant_groups(groups)  # whatever they spawned meanwhile
            if not any(group_alive(group) for group in groups):
                break
            time.sleep(0.1)
        for group in groups:
            if group_alive(group):
                with suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
        for process in self.processes:
            process.wait()
        while any(group_alive(group) for group in groups):  # SIGKILL takes effect at once
            time.sleep(0.05)
        for state in self.state_dirs:  # a killed worker leaves its socket behind
            remove_stale_sockets(state)


@contextmanager
def local_deployment(
    nodes: int,
    home: Path | None = None,
    secure: bool = False,
    state_root: Path | None = None,
    clients: Sequence[str] | None = None,
    node_config: Mapping[str, str] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> Iterator[LocalDeployment]:
    """A running SuperLink with ``nodes`` SuperNodes; all stopped on exit.

    Args:
        nodes: how many SuperNodes (partition ids 0 .. nodes-1).
        home: the deployment's folder (kept); default: a temporary one, removed on exit.
        secure: TLS (a CA and server certificate for 127.0.0.1 in ``home/certs``) and
            SuperNode authentication (each node's key registered before it starts);
            returns once every node is online. Default: plaintext, no authentication,
            returns once the SuperLink listens.
        state_root: where the nodes keep their client state; default: ``home``.
        clients: (secure only) the client node ``i`` answers for, at index ``i``: the
            SecAgg+ roster of the node keys is written to ``certs/roster.toml`` (set
            ``secagg.roster`` to it to sign).
        node_config: entries every node's config gets (its policy: the files it may
            read, see ``deploy.policy.allowing``).
        on_interrupt: called on Ctrl-C, starting up or running, before the deployment
            stops (a stop takes seconds: say so first).

    Raises:
        ValueError: ``clients`` without ``secure``, or not one distinct name per node.
        DeployError: the SuperLink, a registration or (secure) a SuperNode failed to
            start; the message ends with the log or output tail.
    """
    if clients is not None and not secure:
        raise ValueError("a roster of clients needs node keys: pass secure=True")
    folder = Path(tempfile.mkdtemp(prefix="fedllm-flower-")) if home is None else home
    private_folder(folder)
    port = free_port()
    certs = make_certs(folder / "certs", nodes, overwrite=True, clients=clients) if secure else None
    deployment = LocalDeployment(folder, f"127.0.0.1:{port}", certs=certs, state_root=state_root)
    (folder / "config.toml").write_text(connection_toml(deployment))
    try:
        superlink = deployment.start_superlink(port)
        wait_for_port(port, deployment, timeout_s=60.0)
        deployment.start_superexec(port, "superlink", superlink, tls=certs is not None)
        if certs is not None:
            gateway = free_port()
            deployment.fleet = f"127.0.0.1:{gateway}"
            deployment.start_gateway(gateway, port)
            wait_for_port(gateway, deployment, timeout_s=60.0, process=deployment.processes[-1])
            deployment.node_ids = [register_node(deployment, pub) for pub in certs.node_public_keys]
        for i in range(nodes):
            deployment.start_supernode(i, node_config=node_config)
        if certs is not None:
            wait_for_nodes(deployment, deployment.node_ids, timeout_s=60.0)
        yield deployment
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt()
        raise
    finally:
        deployment.stop()
        if home is None:
            shutil.rmtree(folder, ignore_errors=True)


def private_folder(path: Path) -> Path:
    """``path`` as a folder only its owner can enter (:func:`fedllm.deploy.certs.
    private_folder`: mode 0700 whatever the umask, an existing one tightened).

    Raises:
        DeployError: ``path`` is a symlink, not a folder, or another user's.
    """
    try:
        make_private_folder(path)
    except ValueError as err:
        raise DeployError(str(err)) from None
    return path


def isolation_flags(secret: Path) -> list[str]:
    """A SuperLink's or SuperNode's flags to run apps only through a SuperExec holding
    ``secret``: without them any local process may take the apps' tasks (messages,
    contexts) from the Runtime API on 127.0.0.1."""
    return ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]


def connection_toml(deployment: LocalDeployment) -> str:
    """FLWR_HOME/config.toml: the default connection ``local`` to the deployment's SuperLink.

    Plaintext (``insecure = true``) without certificates, else trusting the CA
    (``root-certificates``, which flwr wants as an absolute path).
    """
    ca = deployment.certs.ca_cert if deployment.certs is not None else None
    return connection_to(deployment.superlink, ca)


def connection_to(address: str, ca: Path | None) -> str:
    """The connection ``local`` to the SuperLink at ``address``: TLS checked against
    ``ca`` (PEM), or plaintext when None."""
    head = CONNECTION.format(address=address)
    if ca is None:
        return head + "insecure = true\n"
    return head + f"root-certificates = {json.dumps(str(ca.resolve()))}\n"


@contextmanager
def remote_deployment(address: str, root_certificates: str | None) -> Iterator[LocalDeployment]:
    """A SuperLink running elsewhere (nothing is started or stopped here): a private
    FLWR_HOME holding the connection to it, removed on exit.

    Raises:
        DeployError: ``root_certificates`` names no file.
    """
    ca = None if root_certificates is None else Path(root_certificates)
    if ca is not None and not ca.is_file():
        raise DeployError(
            f"runtime.root_certificates = {root_certificates!r} is not a file; give the CA "
            "certificate (PEM) the SuperLink's certificate was signed with "
            "(`fedllm certs superlink`)"
        )
    folder = Path(tempfile.mkdtemp(prefix="fedllm-flower-"))
    try:
        (folder / "config.toml").write_text(connection_to(address, ca))
        yield LocalDeployment(folder, address)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def security_flags(
    role: Literal["superlink", "supernode"], certs: CertFiles | None, key: Path | None = None
) -> list[str]:
    """The TLS and authentication arguments of ``flower-superlink`` or ``flower-supernode``.

    Without ``certs``: ``--insecure``. With them, the SuperLink serves TLS with the CA's
    server certificate and admits only registered nodes; a SuperNode checks the SuperLink
    against the CA and signs its requests with ``key`` (its OpenSSH private key).
    """
    if certs is None:
        return ["--insecure"]
    if role == "superlink":
        return [
            "--ssl-ca-certfile",
            str(certs.ca_cert),
            "--ssl-certfile",
            str(certs.server_cert),
            "--ssl-keyfile",
            str(certs.server_key),
            "--enable-supernode-auth",
        ]
    if key is None:
        raise ValueError("a SuperNode of a secure deployment needs its private key")
    return ["--root-certificates", str(certs.ca_cert), "--auth-supernode-private-key", str(key)]


def register_node(deployment: LocalDeployment, public_key: Path) -> int:
    """Register a node's public key (OpenSSH) with the SuperLink; returns the node's id.

    Raises:
        DeployError: ``flwr supernode register`` failed (its output is in the message).
    """
    done = deployment.flwr("supernode", "register", str(public_key), "local", "--format", "json")
    answer = json_answer(done.stdout)
    if done.returncode != 0 or not answer.get("success") or "node-id" not in answer:
        raise DeployError(
            f"registering {public_key} with the SuperLink failed (exit {done.returncode}); "
            f"flwr said:\n{tail(done.stdout + done.stderr)}"
        )
    return int(answer["node-id"])


def node_status(deployment: LocalDeployment) -> dict[int, str]:
    """Every node the SuperLink knows, id -> status (registered, online, offline, ...).

    Raises:
        DeployError: ``flwr supernode list`` failed (its output is in the message).
    """
    done = deployment.flwr("supernode", "list", "local", "--format", "json")
    answer = json_answer(done.stdout)
    if done.returncode != 0 or not answer.get("success"):
        raise DeployError(
            f"listing the SuperLink's nodes failed (exit {done.returncode}); flwr said:\n"
            f"{tail(done.stdout + done.stderr)}"
        )
    return {int(node["node-id"]): str(node["status"]) for node in answer.get("nodes", [])}


def wait_for_nodes(deployment: LocalDeployment, node_ids: list[int], timeout_s: float) -> None:
    """Return once every node in ``node_ids`` is online (polls about once a second).

    Raises:
        DeployError: a SuperNode exited (its log tail is in the message), or not every
            node was online within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    status: dict[int, str] = {}
    while time.monotonic() < deadline:
        for process in deployment.supernodes:
            if process.poll() is not None:
                raise DeployError(
                    f"a SuperNode exited at start (exit {process.returncode}); its log ends:"
                    f"\n{deployment.log_tail(process)}"
                )
        status = node_status(deployment)
        if all(status.get(node) == "online" for node in node_ids):
            return
        time.sleep(1.0)
    raise DeployError(
        f"not every SuperNode was online within {timeout_s:.0f} s: {status}; the last "
        f"node's log ends:\n{deployment.log_tail(deployment.supernodes[-1])}"
    )


def tail(text: str, chars: int = 2000) -> str:
    """The last ``chars`` characters of a log or of a command's output, colour codes removed."""
    return ANSI_COLOUR.sub("", text)[-chars:]


def json_answer(text: str) -> dict[str, Any]:
    """The JSON object ``flwr ... --format json`` printed (after any other output); {} if none."""
    start = text.find("{")
    try:
        value = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def submit(
    deployment: LocalDeployment,
    config: Config,
    settings: Mapping[str, str | int],
    timeout_s: float,
) -> None:
    """``flwr run`` the fedllm app with ``config`` on ``deployment``; wait for it to end.

    The configuration travels as TOML text in the run config (with ``settings``: the
    run directory ``out``, ``nodes``, ``resume-rounds``), so every machine runs the same
    one. On a deployment started here, the run counts as finished once the ServerApp
    wrote this submission's token in ``out`` (``flwr run`` exits 0 even when it fails).

    Raises:
        DeployError: ``flwr run`` failed, or wrote no new summary (with the log tail).
    """
    app = deployment.home / "app"
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    run_config = deployment.home / "run-config.toml"
    token = secrets.token_hex(8)
    everything = {"config": dump_config(config), "token": token, **settings}
    run_config.write_text(tomli_w.dumps(everything))
    log = deployment.home / "run.log"
    with log.open("wb") as sink:
        done = subprocess.run(
            ["flwr", "run", str(app), "local", "--stream", "--run-config", str(run_config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=deployment.env(),
            timeout=timeout_s,
        )
    done_file = Path(str(settings["out"])) / FLOWER_DONE
    finished = done_file.is_file() and done_file.read_text() == token
    if done.returncode != 0 or (deployment.processes and not finished):
        raise DeployError(
            f"the Flower run did not finish (exit {done.returncode}, the ServerApp did not "
            f"say it was done in {done_file}); "
            f"its log ends:\n{tail(log.read_text(errors='replace'), 3000)}"
        )


def live_processes() -> dict[int, tuple[int, int]] | None:
    """Every live process (zombies excluded) as pid -> (parent pid, process group), read
    from /proc; None where there is no /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    live: dict[int, tuple[int, int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if fields[0] != "Z":
            live[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return live


def descendant_groups(groups: set[int]) -> set[int]:
    """The process groups of every live descendant of a live process in ``groups``
    (from /proc; empty where there is none)."""
    live = live_processes() or {}
    found = {pid for pid, (_, group) in live.items() if group in groups}
    frontier = set(found)
    while frontier:
        frontier = {pid for pid, (parent, _) in live.items() if parent in frontier} - found
        found |= frontier
    return {live[pid][1] for pid in found} - {0, 1}


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies don't, where /proc tells)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    live = live_processes()
    return live is None or any(group == pgid for _, group in live.values())


def listening(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether ``process`` listens on 127.0.0.1:``port`` within ``timeout_s`` (False
    once it has exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    port: int,
    deployment: LocalDeployment,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Return once ``process`` (default: the SuperLink) accepts connections on ``port``.

    Raises:
        DeployError: the process exited or nothing listened within ``timeout_s``.
    """
    process = process or deployment.processes[0]
    if listening(port, process, timeout_s):
        return
    name = Path(process.args[0] if isinstance(process.args, list) else "").name
    if process.poll() is not None:
        log = deployment.log_tail(process)
        raise DeployError(f"{name} exited at start; its log ends:\n{log}")
    raise DeployError(f"{name} did not listen on port {port} within {timeout_s:.0f} s")
