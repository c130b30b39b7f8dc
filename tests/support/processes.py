"""What is still running: live processes by process group, read from /proc."""

from __future__ import annotations

from pathlib import Path


def process_groups_alive(groups: set[int]) -> list[int]:
    """PIDs of live processes in any of the process ``groups`` (zombies excluded)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgid = fields[0], int(fields[2])
        if pgid in groups and state != "Z":
            alive.append(int(entry.name))
    return alive


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv and state != "Z":
            found.append(int(entry.name))
    return found


def python_stdout(code: str, *argv: str, timeout: float = 300) -> str:
    """What ``python -c code argv...`` printed, in a fresh interpreter (for probes of
    what an import pulls in); fails the test, with the end of its stderr, if it failed."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
