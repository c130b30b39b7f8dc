"""The run loop: rounds, evaluation, checkpoints, export, summary."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedllm.client.store import ClientStateStore
from fedllm.config import Config, dump_config
from fedllm.data.apart import Pending
from fedllm.federation.checkpoint import (
    CHECKPOINT_DAMAGE,
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from fedllm.federation.early import RunData
from fedllm.federation.efficiency import Efficiency
from fedllm.federation.export import export_states
from fedllm.federation.guarantees import accounting_line, privacy_banner, randomness_summary
from fedllm.federation.modes import Mode, build_mode
from fedllm.federation.rundir import RunDir, RunDirError, check_writable
from fedllm.federation.setup import Workspace, prepare
from fedllm.model.device import input_device, model_devices, precision_label
from fedllm.model.flops import describe_flops
from fedllm.model.state import count_parameters
from fedllm.report.progress import Reporter, SilentReporter
from fedllm.report.resources import peak_rss_mb
from fedllm.runtime.simulation import EngineFactory, SimulationEngine
from fedllm.types import ClientId, RoundRecord
from fedllm.wire import payload_bytes


@dataclass
class RunResult:
    """What a finished run returns.

    Attributes:
        run_dir: where everything was written.
        summary: the contents of ``summary.json``.
        records: every line of ``metrics.jsonl``.
    """

    run_dir: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    already_finished: bool = False

    @property
    def changed_model(self) -> bool:
        """False when no round changed the model (every update rejected or round skipped)."""
        return bool(self.summary.get("rounds_applied", 1))


def run(
    config: Config,
    out: str | Path,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    engine: EngineFactory = SimulationEngine,
    remote: Mapping[ClientId, int] | None = None,
    data: Pending[RunData] | None = None,
) -> RunResult:
    """Start a fresh run in ``out`` and train it to the end.

    The model and data are loaded before anything in ``out`` is touched, so a
    config that fails to load leaves an earlier run there intact. ``engine``
    carries the rounds' messages (the embedded simulator by default); ``remote``
    names the clients that live elsewhere, with their training-set sizes (a
    distributed engine's nodes; see :func:`~fedllm.federation.modes.build_mode`).
    ``data``: the tokenizer and data already being built
    (:func:`~fedllm.federation.early.start_run_data`), else they are built here.
    """
    started = time.perf_counter()
    rundir = RunDir(out)
    rundir.check_new(overwrite)
    ws = prepare(config, started=data)
    rundir.create(config, overwrite=overwrite)
    return _train(ws, rundir, reporter or SilentReporter(), None, started, engine, remote)


def resume(
    out: str | Path,
    overrides: list[str] | None = None,
    reporter: Reporter | None = None,
    engine: EngineFactory = SimulationEngine,
    remote: Mapping[ClientId, int] | None = None,
) -> RunResult:
    """Continue the run in ``out`` from its last checkpoint (``engine`` and ``remote``
    as for :func:`run`).

    ``overrides`` may extend ``server.rounds``; other changes would make the
    continuation differ from the run that was started and are refused.
    """
    started = time.perf_counter()
    reporter = reporter or SilentReporter()
    rundir = RunDir(out)
    saved = rundir.load_config()
    check_writable(rundir.root, "run directory")
    config = rundir.load_config(overrides)
    changed = _changed_keys(saved, config) - {"server.rounds"}
    if changed:
        raise RunDirError(
            f"resume can only change server.rounds; these differ from the saved run: "
            f"{', '.join(sorted(changed))}"
        )
    ckpt = _latest_readable_checkpoint(rundir, reporter)
    records = rundir.read_metrics()
    done = max((r["round"] for r in records), default=0)
    if ckpt is None and (done > 0 or rundir.final.exists()):
        raise RunDirError(
            f"{rundir.root} has trained rounds but no readable checkpoint; resuming would "
            "start over and overwrite them: use `fedllm run --overwrite` to start again"
        )
    if ckpt is not None and config.server.rounds < ckpt.round:
        raise RunDirError(
            f"server.rounds = {config.server.rounds} is below the {ckpt.round} rounds "
            "already checkpointed; resume can only extend a run"
        )
    if ckpt is not None and _wrote_its_end(rundir, done, ckpt.round):
        finished = _finished_reason(records, ckpt.round, config.server.rounds)
        if finished is not None:
            reporter.message(f"{rundir.root}: {finished}; nothing was changed")
            return RunResult(rundir.root, rundir.read_summary(), records, already_finished=True)
    ws = prepare(config)
    if config != saved:
        rundir.config_path.write_text(dump_config(config))
    return _train(ws, rundir, reporter, ckpt, started, engine, remote)


def _wrote_its_end(rundir: RunDir, recorded: int, checkpointed: int) -> bool:
    """Whether the run wrote its summary and final model after recording every round up
    to its checkpoint (a crash before the last round's line is not an end)."""
    return rundir.summary_path.exists() and rundir.final.exists() and recorded >= checkpointed


def _finished_reason(records: list[dict[str, Any]], checkpointed: int, rounds: int) -> str | None:
    """Why a run with a summary has nothing left to train, or None if it has."""
    stopped = next((r for r in reversed(records) if r.get("stopped")), None)
    if stopped is not None and stopped["round"] == checkpointed:
        return f"the run stopped after round {checkpointed} ({stopped['stopped']})"
    if checkpointed >= rounds:
        return (
            f"the run already finished its {checkpointed} rounds "
            f"(pass --rounds N with N > {checkpointed} to extend it)"
        )
    return None


def _latest_readable_checkpoint(rundir: RunDir, reporter: Reporter) -> Checkpoint | None:
    """The newest checkpoint that loads; older ones are tried if the newest is damaged,
    and each one skipped is reported with the reason."""
    for path in reversed(list_checkpoints(rundir.checkpoints)):
        try:
            return load_checkpoint(path)
        except CHECKPOINT_DAMAGE as err:
            reporter.warn(f"skipped checkpoint {path.name}: it is damaged ({err})")
    return None


def _train(
    ws: Workspace,
    rundir: RunDir,
    reporter: Reporter,
    ckpt: Checkpoint | None,
    started: float,
    engine: EngineFactory,
    remote: Mapping[ClientId, int] | None,
) -> RunResult:
    config = ws.config
    mode = build_mode(ws, rundir.root, engine, remote)
    first_round = 1
    if ckpt is not None:
        mode.restore(ckpt.round, ckpt.tensors, ckpt.meta)
        if ckpt.clients_dir is not None:
            ClientStateStore(rundir.clients).restore(ckpt.clients_dir)
        _restore_metrics(rundir, ckpt)
        restore_rng(ckpt)
        first_round = ckpt.round + 1
        reporter.message(f"resuming {rundir.root} after round {ckpt.round}")
    else:
        if rundir.metrics_path.exists():
            rundir.metrics_path.unlink()
        _clear_client_state(rundir)
        baseline = RoundRecord(round=0)
        eval_start = time.perf_counter()
        baseline.eval = mode.evaluate()
        baseline.time_s = {"setup": eval_start - started, "eval": time.perf_counter() - eval_start}
        baseline.time_s.update(mode.transport_times())
        baseline.peak_rss_mb = peak_rss_mb()
        mode.baseline(baseline)
        rundir.append_metrics(baseline.to_json())

    rounds = config.server.rounds
    efficiency = Efficiency.of(ws)
    reporter.start(first_round, rounds, _header(ws, config, mode.summary().get("privacy", {})))
    _charge_replayed(mode, rundir, ckpt.round if ckpt else 0, reporter)
    if ckpt is not None:
        first_round = _check_resumable(mode, ckpt.round, reporter, first_round, rounds)
    for round_num in range(first_round, rounds + 1):
        rundir.mark_started(round_num)
        reporter.round_started(round_num, mode.cohort_size)
        round_start = time.perf_counter()
        record = mode.play_round(round_num, reporter.client_done)
        efficiency.annotate(record)
        # a plug-in ends the run early (e.g. a spent privacy budget); after the last
        # planned round nothing is stopped
        stop = mode.stop_reason() if round_num < rounds else None
        if stop is not None:
            record.extra["stopped"] = stop
        last = round_num == rounds or stop is not None
        if round_num % config.eval.every == 0 or last:
            eval_start = time.perf_counter()
            record.eval = mode.evaluate()
            record.time_s["eval"] = time.perf_counter() - eval_start
        record.peak_rss_mb = peak_rss_mb()
        if round_num % config.run.checkpoint_every == 0 or last:
            ckpt_start = time.perf_counter()
            _checkpoint(mode, rundir, round_num, config, record)
            record.time_s["checkpoint"] = time.perf_counter() - ckpt_start
        record.time_s["round"] = time.perf_counter() - round_start
        record.time_s.update(mode.transport_times())
        rundir.append_metrics(record.to_json())
        reporter.round_done(record)
        if stop is not None:
            reporter.message(f"stopping after round {round_num}: {stop}")
            break

    export_states(ws, mode.final_states(), rundir.final)
    records = rundir.read_metrics()
    summary = build_summary(ws, mode, rundir, records, time.perf_counter() - started)
    rundir.write_summary(summary)
    reporter.finish(records, summary)
    return RunResult(rundir.root, summary, records)


def _charge_replayed(mode: Mode, rundir: RunDir, checkpointed: int, reporter: Reporter) -> None:
    """Charge every start of a round after the checkpoint (each attempt, also of a run
    resumed without any checkpoint): it was played in part and may have released
    something before the crash (:meth:`Mode.charge_replayed`). A fresh run has none."""
    replayed = sum(1 for round_num in rundir.started_rounds() if round_num > checkpointed)
    if replayed:
        mode.charge_replayed(replayed)
        reporter.message(
            f"{replayed} start(s) of rounds after round {checkpointed} came before a crash: "
            "what they released is charged before those rounds are played again"
        )


def _check_resumable(
    mode: Mode, checkpointed: int, reporter: Reporter, first: int, rounds: int
) -> int:
    """The first round a resumed run plays: past the last (``rounds + 1``) when a
    plug-in already says stop, e.g. a budget spent before the crash."""
    stop = mode.stop_reason()
    if stop is None:
        return first
    reporter.message(f"not resuming past round {checkpointed}: {stop}")
    return rounds + 1


def _restore_metrics(rundir: RunDir, ckpt: Checkpoint) -> None:
    """Drop records past the checkpoint; re-add the checkpoint's own round if a crash
    came between saving the checkpoint and writing its line."""
    rundir.truncate_metrics(ckpt.round)
    done = max((r["round"] for r in rundir.read_metrics()), default=-1)
    if done < ckpt.round and "record" in ckpt.meta:
        rundir.append_metrics(ckpt.meta["record"])


def _checkpoint(
    mode: Mode, rundir: RunDir, round_num: int, config: Config, record: RoundRecord
) -> None:
    tensors, meta = mode.checkpoint_state()
    meta = {**meta, "record": record.to_json()}
    clients = rundir.clients if rundir.clients.exists() else None
    save_checkpoint(
        rundir.checkpoints, round_num, tensors, meta, clients, config.run.keep_checkpoints
    )


def _clear_client_state(rundir: RunDir) -> None:
    if rundir.clients.exists():
        ClientStateStore(rundir.clients).clear()


def build_summary(
    ws: Workspace, mode: Mode, rundir: RunDir, records: list[dict[str, Any]], wall_s: float
) -> dict[str, Any]:
    """The run's result in one JSON object (``summary.json``)."""
    total, trainable = count_parameters(ws.model)
    evaluated = [r for r in records if r.get("eval")]
    applied = [r["round"] for r in records if _changed_model(r)]
    trained = [r for r in records if r["round"] > 0]
    warning = {} if applied or not trained else {"warning": NOTHING_APPLIED}
    return {
        **warning,
        "run_dir": str(rundir.root),
        "mode": mode.name,
        "model": ws.config.model.name,
        "method": ws.config.method.kind,
        "rounds": max((r["round"] for r in records), default=0),
        "clients": len(ws.data.clients) if ws.data else 0,
        "parameters": total,
        "trainable_parameters": trainable,
        "payload_bytes": payload_bytes(ws.initial),
        "initial": _scalars(evaluated[0]["eval"]) if evaluated else {},
        "final": _scalars(evaluated[-1]["eval"]) if evaluated else {},
        "bytes_up": sum(r.get("bytes_up", 0) for r in records),
        "bytes_down": sum(r.get("bytes_down", 0) for r in records),
        "rejected_updates": sum(len(r.get("rejected", [])) for r in records),
        "skipped_rounds": [r["round"] for r in records if r.get("skipped")],
        "rounds_applied": len(applied),
        "peak_rss_mb": max((r.get("peak_rss_mb", 0.0) for r in records), default=0.0),
        **Efficiency.of(ws).summary(records),
        **mode.summary(),
        "randomness": randomness_summary(ws.config),
        "wall_s": wall_s,
        "final_dir": str(rundir.final),
        "data": ws.data.summary() if ws.data else {},
    }


NOTHING_APPLIED = (
    "no round changed the model: every update was rejected or every round skipped "
    "(see 'rejected' and 'skipped' in metrics.jsonl); the final model is the initial one"
)


def _changed_model(record: dict[str, Any]) -> bool:
    """Whether a round's record shows the model changed (some update applied)."""
    return record["round"] > 0 and not record.get("skipped") and bool(record.get("accepted"))


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("client/")}


def _changed_keys(a: Config, b: Config) -> set[str]:
    flat_a, flat_b = _flatten(a.model_dump()), _flatten(b.model_dump())
    return {k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k)}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def _header(ws: Workspace, config: Config, ledger: dict[str, Any] | None = None) -> str:
    """The start banner: the run's shape, then (with a privacy mechanism) what it
    guarantees and, with a privacy ledger, how it is accounted."""
    total, trainable = count_parameters(ws.model)
    clients = len(ws.data.clients) if ws.data else 0
    flops = describe_flops(ws.model, config.data.seq_len, config.method.kind != "full")
    devices = ", ".join(str(d) for d in model_devices(ws.model))
    precision = precision_label(config.client.bf16, input_device(ws.model))
    precision += f", {config.model.dtype} base"
    lines = [privacy_banner(config), accounting_line(ledger or {})]
    return (
        f"fedllm · {config.federation.mode} · {config.model.name} + {config.method.kind} "
        f"({trainable:,} of {total:,} parameters trainable, "
        f"{payload_bytes(ws.initial) / 1e6:.2f} MB per payload{', ' + flops if flops else ''}) "
        f"· {clients} clients, "
        f"{config.server.clients_per_round} per round · {config.server.rounds} rounds "
        f"· on {devices}, {precision}" + "".join(f"\n{line}" for line in lines if line)
    )
