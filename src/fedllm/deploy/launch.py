"""``fedllm run`` and ``fedllm resume`` with ``runtime.engine = 'flower'``.

The same configuration, submitted to a SuperLink as the fedllm Flower app: with no
``runtime.superlink``, a SuperLink and ``runtime.nodes`` SuperNodes are started on
loopback (node state in the run directory's ``nodes/``, so a resumed run finds it)
and stopped afterwards, also on failure and Ctrl-C. The ServerApp writes the usual
run directory; this process follows its ``metrics.jsonl`` to show the usual
progress, then the result table.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedllm.config import Config
from fedllm.deploy.admission import ADMISSION_FILE
from fedllm.deploy.local import DeployError, local_deployment, remote_deployment, submit
from fedllm.deploy.policy import allowing
from fedllm.federation.rundir import RunDir
from fedllm.federation.runner import RunResult
from fedllm.report.progress import Reporter, SilentReporter
from fedllm.secure.roster import load_roster
from fedllm.types import RoundRecord

RUN_TIMEOUT_S = 24 * 3600.0
"""Longest a Flower run may take before it is abandoned (seconds)."""

NODES = "nodes"
"""The run directory's folder for a loopback deployment's node state (``node-<i>``)."""

POLL_S = 0.5
"""How often the run's records are read for progress (seconds)."""


def flower_nodes(config: Config) -> int:
    """The SuperNodes a Flower run starts or waits for: ``runtime.nodes``, else one per
    member (``runtime.clients``, ``runtime.roster``), else one per client.

    Raises:
        DeployError: the roster cannot be read.
    """
    runtime = config.runtime
    if runtime.nodes or runtime.clients:
        return runtime.nodes or len(runtime.clients)
    if runtime.roster is not None:
        try:
            return len(load_roster(Path(runtime.roster)))
        except (OSError, ValueError) as err:
            raise DeployError(f"runtime.roster = {runtime.roster!r}: {err}") from None
    return config.data.num_clients


def run_on_flower(
    config: Config,
    out: Path,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    resume_rounds: int | None = None,
) -> RunResult | None:
    """Run ``config`` (or, with ``resume_rounds``, continue the run in ``out`` up to that
    many rounds) on Flower; the run directory's records once the ServerApp is done
    (None for a remote SuperLink: the run directory is on its machine).

    Raises:
        DeployError: the deployment did not start or the run did not finish (with the
            log tail); RunDirError: ``out`` can't take a new run.
    """
    reporter = reporter or SilentReporter()
    rundir = RunDir(out)
    superlink = config.runtime.superlink
    if superlink is None and config.secagg.roster is not None:
        raise DeployError(
            "secagg.roster makes every node sign with its authentication key (auth-key in "
            "its node config), but the loopback deployment `fedllm run` starts has no node "
            "keys: run on your SuperLink (runtime.superlink) with nodes started with "
            "`fedllm certs node` keys (docs/deploy.md), or remove secagg.roster"
        )
    if resume_rounds is None and superlink is None:
        rundir.create(config, overwrite)  # before the nodes write their state in it
        shutil.rmtree(rundir.root / NODES, ignore_errors=True)  # an earlier run's nodes
    nodes = flower_nodes(config)
    where = config.runtime.superlink or f"loopback, {nodes} SuperNodes"
    reporter.start(
        _first_round(rundir, resume_rounds),
        config.server.rounds if resume_rounds is None else resume_rounds,
        f"fedllm · federated on Flower ({where}) · {config.model.name} + "
        f"{config.method.kind} · {config.server.clients_per_round} clients per round",
    )
    settings: dict[str, Any] = {"out": str(out.resolve()), "nodes": nodes}
    if resume_rounds is not None:
        settings["resume-rounds"] = resume_rounds
    if superlink is not None:
        if config.runtime.root_certificates is None:
            reporter.warn(
                f"runtime.superlink = {superlink!r} without runtime.root_certificates: the "
                "configuration, models and updates travel in plaintext"
            )
        with remote_deployment(superlink, config.runtime.root_certificates) as deployment:
            submit(deployment, config, settings, RUN_TIMEOUT_S)
        _report_admission(out, reporter)
        reporter.message(
            f"the run finished on {superlink}; its run directory is {out} on the "
            "SuperLink's machine (where the ServerApp runs)"
        )
        return None
    state = out.resolve() / "nodes"
    with local_deployment(
        nodes,
        state_root=state,
        node_config=allowing(config),
        on_interrupt=lambda: reporter.warn(
            "interrupted: stopping the deployment (SuperLink, SuperNodes, apps)..."
        ),
    ) as local:  # leaving the block stops every process it started
        _follow(lambda: submit(local, config, settings, RUN_TIMEOUT_S), rundir, reporter)
    _report_admission(out, reporter)
    records = rundir.read_metrics()
    summary = rundir.read_summary()
    reporter.finish(records, summary)
    return RunResult(rundir.root, summary, records)


def _report_admission(out: Path, reporter: Reporter) -> None:
    """Warn of every node the ServerApp refused (``admission.json``, where the run
    directory is on this machine)."""
    path = out / ADMISSION_FILE
    if not path.is_file():
        return
    for refused in json.loads(path.read_text()).get("refused", []):
        reporter.warn(
            f"refused node {refused['node']} (answering as {refused['client']!r}): "
            f"{refused['reason']} (see {path})"
        )


def _first_round(rundir: RunDir, resume_rounds: int | None) -> int:
    if resume_rounds is None or not rundir.metrics_path.exists():
        return 1
    return max((r["round"] for r in rundir.read_metrics()), default=0) + 1


def _follow(work: Callable[[], None], rundir: RunDir, reporter: Reporter) -> None:
    """Run ``work`` (the submission) in a thread; meanwhile report each new round record.

    An error of ``work`` is raised here once it ends; Ctrl-C leaves through the caller's
    deployment, which stops every process.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as err:  # handed to the caller's thread
            failure.append(err)

    worker = threading.Thread(target=target, name="flwr-run", daemon=True)
    worker.start()
    seen = _recorded(rundir)
    while worker.is_alive():
        worker.join(POLL_S)
        seen = _report_new(rundir, reporter, seen)
    _report_new(rundir, reporter, seen)
    if failure:
        raise failure[0]


def _recorded(rundir: RunDir) -> int:
    """Lines already in ``metrics.jsonl`` (a resumed run's earlier rounds)."""
    path = rundir.metrics_path
    return len(path.read_text().splitlines()) if path.exists() else 0


def _report_new(rundir: RunDir, reporter: Reporter, seen: int) -> int:
    """Report the complete lines past the first ``seen``; how many there are now."""
    path = rundir.metrics_path
    if not path.exists():
        return seen
    lines = path.read_text().splitlines()
    if len(lines) < seen:  # a fresh run replaced an earlier one's records
        seen = 0
    for line in lines[seen:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return seen  # a line being written: read it next time
        if record.get("round", 0) > 0:
            reporter.round_done(RoundRecord.from_json(record))
        seen += 1
    return seen
