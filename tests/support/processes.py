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
