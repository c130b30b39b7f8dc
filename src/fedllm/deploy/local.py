"""A Flower deployment on this machine: a SuperLink and N SuperNodes on loopback.

``run_local`` starts them on free ports with a private ``FLWR_HOME``, submits the
fedllm app (``flwr run``), waits for the run to finish and stops every process
it started, also on failure and Ctrl-C. Node ``i`` answers for the ``i``-th client
of the configuration (sorted ids) and keeps its client state in its own folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

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
clientapp = "fedllm.deploy.apps:client_app"

[tool.flwr.app.config]
config = ""
out = ""
nodes = 1
"""

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
    """

    home: Path
    superlink: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, **QUIET_FLOWER, "FLWR_HOME": str(self.home), "PATH": path}

    def start(self, argv: list[str], log: str) -> None:
        with (self.home / log).open("wb") as out:
            self.processes.append(
                subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env(),
                    start_new_session=True,
                )
            )

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every process group started, then SIGKILL what is left after ``grace_s``."""
        for process in reversed(self.processes):
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def run_local(config_path: Path, out: Path, nodes: int, timeout_s: float = 3600.0) -> Path:
    """Run ``config_path`` on a fresh loopback deployment of ``nodes`` SuperNodes.

    Returns:
        ``out``, the run directory the ServerApp wrote.

    Raises:
        DeployError: a process failed to start, or the run wrote no summary (the
            ServerApp's log tail is in the message).
    """
    with local_deployment(nodes) as deployment:
        submit(deployment, config_path, out, nodes, timeout_s)
    return out


@contextmanager
def local_deployment(nodes: int, home: Path | None = None) -> Iterator[LocalDeployment]:
    """A running SuperLink with ``nodes`` SuperNodes; all stopped on exit."""
    folder = Path(tempfile.mkdtemp(prefix="fedllm-flower-")) if home is None else home
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    deployment = LocalDeployment(folder, f"127.0.0.1:{port}")
    (folder / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
        f'address = "{deployment.superlink}"\ninsecure = true\n'
    )
    try:
        deployment.start(
            [
                "flower-superlink",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            "superlink.log",
        )
        wait_for_port(port, deployment, timeout_s=60.0)
        for i in range(nodes):
            state = folder / f"node-{i}"
            deployment.start(
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    deployment.superlink,
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i} state-dir='{state}'",
                ],
                f"supernode-{i}.log",
            )
        yield deployment
    finally:
        deployment.stop()
        if home is None:
            shutil.rmtree(folder, ignore_errors=True)


def submit(
    deployment: LocalDeployment, config_path: Path, out: Path, nodes: int, timeout_s: float
) -> None:
    """``flwr run`` the fedllm app on ``deployment`` and wait for its run directory."""
    app = deployment.home / "app"
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    started = time.time()
    run_config = f"config='{config_path.resolve()}' out='{out.resolve()}' nodes={nodes}"
    log = deployment.home / "run.log"
    with log.open("wb") as sink:
        done = subprocess.run(
            ["flwr", "run", str(app), "local", "--stream", "--run-config", run_config],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=deployment.env(),
            timeout=timeout_s,
        )
    summary = out / "summary.json"
    if done.returncode != 0 or not summary.exists() or summary.stat().st_mtime < started:
        tail = log.read_text(errors="replace")[-3000:]
        raise DeployError(
            f"the Flower run did not finish (no new {summary}); its log ends:\n{tail}"
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, deployment: LocalDeployment, timeout_s: float) -> None:
    """Return once something accepts connections on ``port``.

    Raises:
        DeployError: the SuperLink exited or did not listen within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if deployment.processes[0].poll() is not None:
            log = (deployment.home / "superlink.log").read_text(errors="replace")[-2000:]
            raise DeployError(f"the SuperLink exited at start; its log ends:\n{log}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DeployError(f"the SuperLink did not listen on port {port} within {timeout_s:.0f} s")
