"""Stopping a loopback deployment stops everything it started, down to the processes
that made sessions of their own (Flower's flwr-serverapp and flower-superexec lived on
as orphans for 15-30 s after `fedllm run` returned: issue 26)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fedllm.deploy.local import LocalDeployment, descendant_groups, group_alive

SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""


def test_stop_ends_the_started_groups_and_their_descendants_own_sessions(
    tmp_path: Path,
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, start_new_session=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert child in descendant_groups({parent.pid})  # its own session: its own group
    deployment = LocalDeployment(tmp_path, "127.0.0.1:0", processes=[parent])
    begun = time.monotonic()
    deployment.stop(grace_s=10)
    assert not group_alive(parent.pid) and not group_alive(child)
    assert time.monotonic() - begun < 10  # SIGTERM was enough: no waiting out the grace
