"""The `fedllm` command line: run | resume | eval | audit | generate | export | report | config |
select-prompt | inspect | data."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedllm.config import load_config
from fedllm.federation.rundir import RunDir, RunDirError, check_writable
from fedllm.settings import ConfigError

if TYPE_CHECKING:
    from fedllm.federation.runner import RunResult
    from fedllm.federation.setup import Workspace
    from fedllm.report.progress import Reporter
    from fedllm.types import Params

EPILOG = """examples:
  fedllm run configs/demo.toml --set server.rounds=3 --out runs/my-run
  fedllm resume runs/my-run
  fedllm eval runs/my-run
  fedllm audit runs/my-run --max-records 128
  fedllm generate runs/my-run --prompt "What do you like to do on weekends?"
  fedllm export runs/my-run --to exported/
  fedllm report runs/my-run
  fedllm select-prompt configs/hard_prompt.toml --out runs/hard-prompt
  fedllm inspect runs/my-prompt-run --top-k 5
  fedllm data partition configs/tiny.toml --set data.partition=topic
  fedllm deploy local configs/tiny.toml --set data.num_clients=2 --out runs/on-flower
"""


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The ``--set SECTION.KEY=VALUE`` option (repeatable) every config command takes."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )


def add_run_target(parser: argparse.ArgumentParser) -> None:
    """CONFIG, ``--set`` overrides, ``--out`` and ``--overwrite``: what starting a run takes."""
    parser.add_argument("config", type=Path, help="TOML config file (see configs/)")
    parser.add_argument(
        "--out", type=Path, default=None, help="run directory (default: runs/<config name>)"
    )
    add_overrides(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedllm",
        description="Federated fine-tuning of large language models on private text, "
        "on an embedded simulator. Every run writes a run directory: config.toml, "
        "metrics.jsonl, summary.json, checkpoints/ and final/ (Hugging Face format).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="train a configuration from scratch",
        description="Train the federation described by CONFIG (TOML).",
    )
    add_run_target(p)
    p.add_argument("--quiet", action="store_true", help="no progress display")

    p = sub.add_parser(
        "resume",
        help="continue a run from its last checkpoint",
        description="Continue RUN_DIR from its last checkpoint; the result "
        "equals an uninterrupted run.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="extend the run to this many rounds in total (more than it has done)",
    )
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser(
        "eval",
        help="held-out loss and perplexity of a run's model",
        description="Evaluate the latest checkpoint of RUN_DIR on every "
        "client's eval split and on the test split; writes eval.json.",
    )
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser(
        "audit",
        help="leakage audit of a run's model: canary exposure, membership inference, extraction",
        description="Rank each canary of RUN_DIR (privacy.canaries) among candidate secrets "
        "by the trained model's loss (exposure), complete its prefix greedily (extraction), "
        "and attack each client's membership (its training examples against its held-out "
        "ones; loss, and loss minus the untrained model's). Writes RUN_DIR/audit.json.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--max-records",
        type=int,
        default=256,
        help="most members and most held-out examples scored per client (seeded sample)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress display")

    p = sub.add_parser(
        "attack",
        help="adversarial examples against a run's model: PGD on embeddings, a suffix search",
        description="On RUN_DIR's held-out test prompts: raise the reference response's loss "
        "by PGD on the prompt's input embeddings within each --eps, and search a --suffix-"
        "tokens adversarial suffix that makes the greedy reply start with --target (success "
        "rate). Writes RUN_DIR/attack.json. See docs/security.md.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--prompts", type=int, default=8, help="held-out test prompts attacked")
    p.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.05, 0.1], help="PGD budgets")
    p.add_argument("--norm", choices=["l2", "linf"], default="l2", help="PGD's norm")
    p.add_argument(
        "--scale",
        choices=["relative", "absolute"],
        default="relative",
        help="eps as a fraction of each prompt's embedding norm, or in embedding units",
    )
    p.add_argument("--pgd-steps", type=int, default=10, help="PGD steps per budget")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per PGD batch")
    p.add_argument("--target", default="Sure, here is", help="the reply the suffix should force")
    p.add_argument("--suffix-tokens", type=int, default=8, help="the suffix's token budget")
    p.add_argument("--search-steps", type=int, default=20, help="search steps per prompt")
    p.add_argument("--candidates", type=int, default=32, help="suffixes scored per step")
    p.add_argument("--top-k", type=int, default=64, help="candidate tokens per position")
    p.add_argument(
        "--proposals",
        choices=["gradient", "random"],
        default="gradient",
        help="candidate tokens by the one-hot gradient (GCG) or at random",
    )
    p.add_argument(
        "--success-loss",
        type=float,
        default=None,
        help="a target loss (nats per token) that also counts as success",
    )
    p.add_argument("--client", default=None, help="which client's model (local-mode runs)")
    p.add_argument("--quiet", action="store_true", help="no progress display")

    p = sub.add_parser(
        "matrix",
        help="run an attack x defense x malicious-fraction matrix and draw its heat maps",
        description="Run every cell of the matrix FILE (a [matrix] table: a base config, "
        "attacks, defenses, fractions, partitions; see docs/security.md) into "
        "OUT/cells/<cell>, then write OUT/matrix.json, OUT/matrix.md (tables) and one heat "
        "map per metric. A cell "
        "that already finished with the same overrides is read back, not rerun.",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: runs/<file stem>")
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        metavar="MATRIX_JSON",
        help="an earlier matrix.json (e.g. the committed one): cells whose resolved config "
        "and prepared model match one of its cells are taken from it, not run",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")

    p = sub.add_parser(
        "generate",
        help="generate a reply with a run's model",
        description="Reply to PROMPT with the model of RUN_DIR (chat template).",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--client", default=None, help="which client's model (local-mode runs)")

    p = sub.add_parser(
        "export",
        help="write a run's model in Hugging Face format",
        description="LoRA, prompt, prefix, ptuning and IA3 runs export a peft adapter "
        "(PeftModel.from_pretrained loads it), adapter runs bottleneck adapter files "
        "(fedllm.model.methods.adapter.load_adapter); --merge folds LoRA or IA3 into a "
        "plain model (AutoModelForCausalLM.from_pretrained loads it).",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--to", type=Path, required=True, help="target directory (new or empty)")
    p.add_argument("--merge", action="store_true", help="merge adapters into the base weights")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --to, replacing only the files an export writes",
    )
    p.add_argument("--client", default=None, help="which client's model (local-mode runs)")

    p = sub.add_parser(
        "report",
        help="plot a run's metrics and print its table (or compare runs)",
        description="Write perplexity, train-loss and communication plots "
        "(PNG) into RUN_DIR/report/ and print the per-round table. With several "
        "run directories, also compare them: a table of results and "
        "report/comparison.png in the first one.",
    )
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")

    p = sub.add_parser(
        "config",
        help="print the resolved configuration",
        description="Validate CONFIG with overrides and print it as TOML.",
    )
    p.add_argument("config", type=Path)
    add_overrides(p)

    p = sub.add_parser(
        "select-prompt",
        help="choose a hard (text) instruction across clients",
        description="Every client scores candidate instructions ([hard_prompt]) by the "
        "answer loss on its private held-out chats and sends back only the scores; the "
        "best are mutated and scored again. Writes OUT/hard_prompt.json and OUT/config.toml.",
    )
    p.add_argument("config", type=Path, help="TOML config file (see configs/hard_prompt.toml)")
    add_overrides(p)
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/<config name>-prompt)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier selection in --out (never a training run)",
    )
    p.add_argument(
        "--run",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="score with this run's trained model (its seed, model, method and data are used)",
    )

    p = sub.add_parser(
        "inspect",
        help="show the vocabulary tokens nearest a learned soft prompt",
        description="For each virtual token of a 'prompt' or 'ptuning' run, the nearest "
        "vocabulary tokens by cosine similarity to the input embeddings; writes "
        "RUN_DIR/inspect.json.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--top-k", type=int, default=5, help="neighbours per virtual token")
    p.add_argument("--client", default=None, help="which client's prompt (local-mode runs)")

    p = sub.add_parser(
        "deploy",
        help="run a configuration on Flower (a SuperLink and SuperNodes)",
        description="Run CONFIG on a Flower deployment instead of the embedded simulator.",
    )
    deploy_sub = p.add_subparsers(dest="deploy_command", required=True, metavar="DEPLOY_COMMAND")
    q = deploy_sub.add_parser(
        "local",
        help="a SuperLink and one SuperNode per client on loopback, then stop them",
        description="Start a SuperLink and NODES SuperNodes on free loopback ports, run "
        "CONFIG on them (node i answers for the i-th client, sorted by id), write the "
        "usual run directory, and stop every process started (also on failure).",
    )
    add_run_target(q)
    q.add_argument("--nodes", type=int, default=None, help="SuperNodes (default: the clients)")
    q.add_argument("--quiet", action="store_true", help="no progress display")

    p = sub.add_parser(
        "certs",
        help="TLS certificates and node keys for a deployment across machines",
        description="Each party makes its own keys and only public files travel: the "
        "operator makes the CA and the SuperLink's certificate (certs superlink), each "
        "organisation makes its node's key pair on the node's machine (certs node) and "
        "sends the operator only the public key, and the operator makes the SecAgg+ roster "
        "from those public keys (certs roster). See docs/deploy.md for where each file goes.",
    )
    certs_sub = p.add_subparsers(dest="certs_command", required=True, metavar="CERTS_COMMAND")
    q = certs_sub.add_parser(
        "superlink",
        help="on the SuperLink's machine: a CA and the SuperLink's TLS certificate",
        description="Write into OUT a self-signed CA (ca.crt, ca.key) and the SuperLink's "
        "certificate and key signed by it (superlink.crt, superlink.key), valid for every "
        "--host and always for 127.0.0.1 (the SuperLink's own SuperExec and a fleet gateway "
        "reach it there). No node key is made. Private keys are mode 0600, OUT mode 0700.",
    )
    q.add_argument("out", type=Path, metavar="OUT", help="folder to write the files into")
    q.add_argument(
        "--host",
        action="append",
        default=None,
        help="a name or IP the SuperLink is reached at (repeatable; default: 127.0.0.1 "
        "and localhost)",
    )
    q.add_argument(
        "--days", type=int, default=365, help="validity of the certificates (at most ten years)"
    )
    q.add_argument("--overwrite", action="store_true", help="replace files already in OUT")
    q = certs_sub.add_parser(
        "node",
        help="on a node's machine: the node's authentication key pair",
        description="Write into OUT the node's OpenSSH ECDSA key pair for Flower's node "
        "authentication: NAME.key (mode 0600; flower-supernode --auth-supernode-private-key "
        "and the node's auth-key; it never leaves this machine) and NAME.pub, the only file "
        "sent to the operator.",
    )
    q.add_argument("out", type=Path, metavar="OUT", help="folder to write the key pair into")
    q.add_argument(
        "--name",
        default="node",
        help="the files' name, e.g. the client's (default: node, so node.key and node.pub)",
    )
    q.add_argument("--overwrite", action="store_true", help="replace an earlier pair of NAME")
    q = certs_sub.add_parser(
        "roster",
        help="the SecAgg+ roster from the nodes' public keys",
        description="Write OUT_FILE, the secagg.roster (client id -> its node's public key) "
        "that makes SecAgg+ sign its keys, from the public key files the organisations sent "
        "(NAME.pub of `fedllm certs node`, or PEM). A private key, a non-EC key or one key "
        "given to two clients is refused.",
    )
    q.add_argument(
        "out_file", type=Path, metavar="OUT_FILE", help="the roster file to write, e.g. roster.toml"
    )
    q.add_argument(
        "--client",
        action="append",
        required=True,
        metavar="NAME=PUBKEY_FILE",
        help="a client id and its node's public key file (repeat once per client)",
    )
    q.add_argument("--overwrite", action="store_true", help="replace an existing OUT_FILE")

    p = sub.add_parser(
        "he-keys",
        help="make the CKKS contexts of homomorphic aggregation on a deployment",
        description="Write into OUT the clients' TenSEAL context with the secret key "
        "(he-secret.ctx, mode 0600: every node's he.secret_context, never the server's) and "
        "the server's public context (he-public.ctx: he.public_context). Needs the 'he' "
        "extra. See docs/privacy.md.",
    )
    p.add_argument("out", type=Path, help="folder to write the files into")
    p.add_argument("--overwrite", action="store_true", help="replace files already in OUT")

    p = sub.add_parser(
        "gateway",
        help="serve a SuperLink's Fleet API, and nothing else, on the network address",
        description="The one port a federation exposes: forward the Fleet API's calls "
        "(what SuperNodes send) to the SuperLink on 127.0.0.1 and refuse the Control API "
        "(registering keys, submitting runs) and the Runtime API with 403. Start the "
        "SuperLink with --host 127.0.0.1; see docs/deploy.md.",
    )
    _add_gateway_arguments(p)

    p = sub.add_parser(
        "data",
        help="inspect how a configuration splits its data among clients",
        description="Inspect the federation a configuration builds, without loading a model.",
    )
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    q = data_sub.add_parser(
        "partition",
        help="per-client sizes, label mix and divergences; a heat map",
        description="Build the clients of CONFIG exactly as a run would (tokenizer only) and "
        "print per client: train/eval examples, top labels (the partition_by field, or "
        "topics), the Jensen-Shannon divergence of its token distribution from the global "
        "one and the earth mover's distance of its label distribution; then the summary. "
        "Writes OUT/partition.json and OUT/heatmap.png (clients x labels).",
    )
    q.add_argument("config", type=Path, help="TOML config file (see configs/)")
    add_overrides(q)
    q.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: runs/partition-<config name>)",
    )
    q.add_argument(
        "--overwrite", action="store_true", help="replace an earlier partition.json in --out"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        handler = _HANDLERS[args.command]
        with terminate_as_interrupt():
            return handler(args, console)
    except Exception as err:
        if is_user_error(err):
            text = escape(str(err))
        elif isinstance(err, OSError):  # the disk, not the input: a full disk, a vanished file
            text = escape(_describe_os_error(err))
        else:
            raise
        console.print(f"[red]error:[/red] {text}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print(interrupted_message(args), soft_wrap=True)
        return 130


def interrupted_message(args: argparse.Namespace) -> str:
    """What an interrupted command leaves: a training run's last checkpoint (and how to
    continue), or that none was written yet."""
    if args.command == "run":
        run_dir = args.out or Path("runs") / args.config.stem
    elif args.command == "resume":
        run_dir = args.run_dir
    else:
        return "interrupted"
    from fedllm.federation.checkpoint import list_checkpoints

    saved = list_checkpoints(Path(run_dir) / "checkpoints")
    if not saved:
        return (
            f"interrupted before the first checkpoint: nothing of {run_dir} to continue; "
            "start the run again"
        )
    last = saved[-1].name.removeprefix("round-").lstrip("0") or "0"
    return (
        f"interrupted: the checkpoint of round {last} is kept; continue with "
        f"`fedllm resume {run_dir}`"
    )


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a service manager stopping the job) acts as Ctrl-C meanwhile: the
    run keeps its last checkpoint and a Flower deployment it started is stopped, where
    Python's default would end the process on the spot. Only in the main thread (the
    only one that may set handlers); the previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


NOTHING_CHANGED = 3
"""Exit status of a run that finished without any round changing the model."""


def say(console: Console, text: str) -> None:
    """Print ``text`` as it is: brackets in paths or messages are not rich markup, and
    long lines are left to the terminal to wrap (a pipe gets them whole)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _describe_os_error(err: OSError) -> str:
    where = f": {err.filename}" if err.filename else ""
    return f"{err.strerror or err}{where}"


USER_ERRORS = (
    ("fedllm.settings", "ConfigError"),
    ("fedllm.federation.rundir", "RunDirError"),
    ("fedllm.registry", "UnknownComponentError"),
    ("builtins", "FileNotFoundError"),
    ("fedllm.data.sources", "DataError"),
    ("fedllm.composition", "ModeError"),
    ("fedllm.model.load", "ModelLoadError"),
    ("fedllm.model.methods.base", "MethodError"),
    ("fedllm.model.state", "StateMismatchError"),
    ("fedllm.pipeline.stage", "PipelineError"),
    ("fedllm.privacy.accountant", "PrivacyConfigError"),
    ("fedllm.algorithms.personal.split", "PersonalizationError"),
    ("fedllm.prompts.select", "SelectionError"),
    ("fedllm.prompts.inspect", "InspectError"),
    ("fedllm.eval.generate", "GenerationError"),
    ("fedllm.privacy.audit.audit", "AuditError"),
    ("fedllm.deploy.local", "DeployError"),
    ("fedllm.security.evasion.attack", "AttackError"),
    ("fedllm.security.cleaning.client", "CleaningError"),
)
"""Errors that mean bad input, not a bug (module, class): shown as one line, no traceback."""


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is one of :data:`USER_ERRORS`. Only modules already imported are
    looked at (an error can't come from a module that never loaded), so a light command
    such as ``fedllm config`` never imports torch to classify its errors."""
    for module, name in USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(err, getattr(loaded, name)):
            return True
    return False


def _reporter(quiet: bool, console: Console) -> Reporter:
    from fedllm.report.progress import QuietReporter, RichReporter

    return QuietReporter(console) if quiet else RichReporter(console)


def _run(args: argparse.Namespace, console: Console) -> int:
    config = load_config(args.config, args.overrides)
    out = args.out or Path("runs") / args.config.stem
    reporter = _reporter(args.quiet, console)
    if config.runtime.engine == "flower":
        from fedllm.deploy.launch import run_on_flower

        return _exit_status(run_on_flower(config, out, args.overwrite, reporter), console)
    from fedllm.federation.early import start_run_data

    # the data is built in a child from here on, while this process imports and loads
    with start_run_data(config) as data:
        from fedllm.federation.runner import run

        result = run(config, out, overwrite=args.overwrite, reporter=reporter, data=data)
    return _exit_status(result, console)


def _resume(args: argparse.Namespace, console: Console) -> int:
    from fedllm.federation.runner import resume

    if args.rounds is not None and args.rounds < 1:
        raise ConfigError(f"--rounds = {args.rounds}: must be at least 1 (rounds in total)")
    overrides = [] if args.rounds is None else [f"server.rounds={args.rounds}"]
    reporter = _reporter(args.quiet, console)
    saved = RunDir(args.run_dir).load_config(overrides)
    if saved.runtime.engine == "flower":
        from fedllm.deploy.launch import run_on_flower

        rounds = saved.server.rounds
        return _exit_status(
            run_on_flower(saved, args.run_dir, reporter=reporter, resume_rounds=rounds), console
        )
    result = resume(args.run_dir, overrides, reporter=reporter)
    if result.already_finished:
        say(console, f"{result.run_dir}: already finished; its records were left as they are")
    return _exit_status(result, console)


def _exit_status(result: RunResult | None, console: Console) -> int:
    """0, or :data:`NOTHING_CHANGED` with the summary's warning when no round applied
    (None: a run whose records are on another machine)."""
    if result is None or result.changed_model:
        return 0
    warning = f"warning: {result.summary.get('warning', '')}"
    console.print(warning, style="yellow", markup=False, soft_wrap=True)
    return NOTHING_CHANGED


def _eval(args: argparse.Namespace, console: Console) -> int:
    from fedllm.algorithms.personal.split import PersonalSplit
    from fedllm.federation.evaluation import evaluate_states
    from fedllm.federation.setup import prepare
    from fedllm.federation.trained import load_trained

    rundir = RunDir(args.run_dir)
    config = rundir.load_config()
    check_writable(rundir.root, "run directory")
    ws = prepare(config)
    trained = load_trained(rundir, ws.initial, PersonalSplit.from_config(ws.config.personal))
    metrics = evaluate_states(ws, trained.state_of, shared=trained.shared)
    (rundir.root / "eval.json").write_text(
        json.dumps({"round": trained.round, **metrics}, indent=2)
    )
    table = Table(title=escape(f"{rundir.root} after round {trained.round}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)
    return 0


def _audit(args: argparse.Namespace, console: Console) -> int:
    from fedllm.algorithms.personal.split import PersonalSplit
    from fedllm.federation.setup import prepare
    from fedllm.federation.trained import load_trained
    from fedllm.privacy.audit.audit import (
        AuditOptions,
        Models,
        audit_run,
        no_progress,
        recorded_canaries,
    )
    from fedllm.privacy.audit.table import canary_table, membership_table, rich_progress

    for option, value in (("--max-records", args.max_records), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{option} = {value}: must be at least 1")
    rundir = RunDir(args.run_dir)
    config = rundir.load_config()
    check_writable(rundir.root, "run directory")
    if config.federation.mode == "local":
        raise RunDirError(
            f"{rundir.root} is a local-mode run (one model per client, none shared): "
            "`fedllm audit` audits a run's global model"
        )
    ws = prepare(config)
    assert ws.data is not None
    trained = load_trained(rundir, ws.initial, PersonalSplit.from_config(ws.config.personal))
    summary = rundir.read_summary() if rundir.summary_path.exists() else None
    canaries = recorded_canaries(summary, ws.data.canaries)
    options = AuditOptions(args.max_records, args.batch_size, config.seed)
    models = Models(ws.model, ws.tokenizer, trained.pick(None, list(ws.data.clients)), ws.initial)
    progress = no_progress if args.quiet else rich_progress(console)
    report = audit_run(models, ws.data, canaries, config.privacy.canary_spec(), options, progress)
    head = {"run": str(rundir.root), "round": trained.round, "max_records": args.max_records}
    (rundir.root / "audit.json").write_text(json.dumps({**head, **report}, indent=2) + "\n")
    stdout = Console()
    if report["canaries"]:
        stdout.print(canary_table(report["canaries"], f"{rundir.root} · canaries"))
    else:
        say(console, "no canaries in this run (privacy.canaries = 0): membership only")
    stdout.print(membership_table(report["membership"], f"{rundir.root} · membership inference"))
    say(console, f"wrote {rundir.root / 'audit.json'}")
    return 0


def _matrix(args: argparse.Namespace, console: Console) -> int:
    from fedllm.matrix.markdown import matrix_markdown
    from fedllm.matrix.run import run_matrix
    from fedllm.matrix.spec import load_matrix
    from fedllm.matrix.table import matrix_progress, no_attack_table
    from fedllm.report.heatmap import plot_matrix

    matrix = load_matrix(args.file)
    out = args.out or Path("runs") / args.file.stem
    reuse = _matrix_summary(args.reuse) if args.reuse is not None else None
    with matrix_progress(console, args.quiet) as progress:
        summary = run_matrix(matrix, out, progress, reuse)
    if not args.quiet:
        console.print(no_attack_table(summary))
    plots = plot_matrix(summary, out)
    (out / "matrix.md").write_text(matrix_markdown(summary))
    say(console, f"{out / 'matrix.json'}, matrix.md and {len(plots)} heat maps in {out}")
    return 0


def _matrix_summary(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a ``matrix.json``), or a ConfigError naming why not."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"--reuse {path}: {err}; give a matrix.json `fedllm matrix` wrote"
        ) from None
    if not isinstance(content, dict):
        raise ConfigError(f"--reuse {path}: not a JSON object; give a matrix.json")
    return content


def _attack(args: argparse.Namespace, console: Console) -> int:
    from dataclasses import replace

    from fedllm.algorithms.personal.split import PersonalSplit
    from fedllm.federation.setup import prepare
    from fedllm.federation.trained import load_trained
    from fedllm.model.device import input_device, use_bf16
    from fedllm.model.state import set_trainable_state
    from fedllm.security.evasion.attack import AttackOptions, attack_model, no_progress
    from fedllm.security.evasion.table import pgd_table, rich_progress, suffix_table

    options = AttackOptions(
        args.prompts,
        tuple(args.eps),
        args.norm,
        args.scale,
        args.pgd_steps,
        args.batch_size,
        args.target,
        args.suffix_tokens,
        args.search_steps,
        args.candidates,
        args.top_k,
        args.proposals,
        args.success_loss,
    )
    options.check()  # before the model loads
    rundir = RunDir(args.run_dir)
    config = rundir.load_config()
    check_writable(rundir.root, "run directory")
    ws = prepare(config)
    assert ws.data is not None
    trained = load_trained(rundir, ws.initial, PersonalSplit.from_config(ws.config.personal))
    set_trainable_state(ws.model, trained.pick(args.client, list(ws.data.clients)))
    progress = no_progress if args.quiet else rich_progress(console)
    options = replace(options, seed=config.seed)
    bf16 = use_bf16(config.client.bf16, input_device(ws.model))
    report = attack_model(ws.model, ws.tokenizer, ws.data.test, options, progress, bf16)
    head = {"run": str(rundir.root), "round": trained.round, "client": args.client}
    (rundir.root / "attack.json").write_text(json.dumps({**head, **report}, indent=2) + "\n")
    stdout = Console()
    stdout.print(pgd_table(report["pgd"], str(rundir.root)))
    stdout.print(suffix_table(report["suffix"], str(rundir.root)))
    say(console, f"wrote {rundir.root / 'attack.json'}")
    return 0


def _generate(args: argparse.Namespace, console: Console) -> int:
    from fedllm.eval.generate import check_generation_options, generate_reply
    from fedllm.model.state import set_trainable_state

    check_generation_options(args.max_new_tokens, args.temperature)  # before the model loads
    ws, state = _trained_model(args.run_dir, args.client)
    set_trainable_state(ws.model, state)
    reply = generate_reply(
        ws.model, ws.tokenizer, args.prompt, args.max_new_tokens, args.temperature, ws.config.seed
    )
    print(reply)
    return 0


def _export(args: argparse.Namespace, console: Console) -> int:
    from fedllm.federation.export import check_export_target, export_one

    check_export_target(args.to, args.overwrite)  # before the model loads
    ws, state = _trained_model(args.run_dir, args.client)
    export_one(ws, state, args.to, merge=args.merge)
    say(console, f"exported to {args.to}")
    return 0


def _trained_model(run_dir: Path, client: str | None) -> tuple[Workspace, Params]:
    """The run's model (data loaded only for local runs) and its latest trained state."""
    from fedllm.algorithms.personal.split import PersonalSplit
    from fedllm.federation.setup import prepare
    from fedllm.federation.trained import load_trained

    rundir = RunDir(run_dir)
    config = rundir.load_config()
    split = PersonalSplit.from_config(config.personal)
    ws = prepare(config, with_data=config.federation.mode == "local" or split.active)
    known = list(ws.data.clients) if ws.data is not None else []
    return ws, load_trained(rundir, ws.initial, split).pick(client, known)


def _report(args: argparse.Namespace, console: Console) -> int:
    from fedllm.report.compare import comparison_table, plot_comparison
    from fedllm.report.plots import Plot, plot_run
    from fedllm.report.progress import result_table, run_title

    def tell(plot: Plot) -> None:
        say(console, f"wrote {plot.path}" if plot.path else plot.note)

    out = Console()
    all_records, summaries = {}, {}
    for root in args.run_dirs:
        rundir = RunDir(root)
        name = rundir.root.name
        records = rundir.read_metrics()
        if not records:
            raise RunDirError(f"{rundir.root} has no metrics.jsonl records yet")
        about: dict[str, object] = {}
        if rundir.summary_path.exists():
            about = summaries[name] = rundir.read_summary()
        elif rundir.config_path.exists():  # unfinished run: mode and method from its config
            config = rundir.load_config()
            about = {"mode": config.federation.mode, "method": config.method.kind}
        out.print(result_table(records, title=run_title(name, about)))
        for plot in plot_run(records, rundir.root / "report", title=name):
            tell(plot)
        all_records[name] = records
    if len(args.run_dirs) > 1:
        out.print(comparison_table(summaries))
        target = RunDir(args.run_dirs[0]).root / "report" / "comparison.png"
        tell(plot_comparison(all_records, target))
    return 0


def _config(args: argparse.Namespace, console: Console) -> int:
    from fedllm.config import dump_config

    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def _select_prompt(args: argparse.Namespace, console: Console) -> int:
    from fedllm.prompts.report import client_table, selection_table
    from fedllm.prompts.session import run_selection

    config = load_config(args.config, args.overrides)
    out = args.out or Path("runs") / f"{args.config.stem}-prompt"
    done = run_selection(
        config, out, args.run, log=lambda line: say(console, line), overwrite=args.overwrite
    )
    stdout = Console()
    title = escape(f"hard prompt selection · {out}")
    stdout.print(selection_table(done.selection, title=title))
    stdout.print(client_table(done.selection))
    chosen = done.selection.chosen
    say(console, f"chosen ({chosen.candidate.id}): {chosen.candidate.text}")
    say(console, f"wrote {out / 'hard_prompt.json'}")
    return 0


def _inspect(args: argparse.Namespace, console: Console) -> int:
    from fedllm.federation.checkpoint import list_checkpoints
    from fedllm.model.state import set_trainable_state
    from fedllm.prompts.inspect import (
        check_supported,
        inspect_json,
        nearest_tokens,
        neighbours_table,
        prompt_embeddings,
    )

    if args.top_k < 1:
        raise ConfigError(f"--top-k = {args.top_k}: must be at least 1")
    rundir = RunDir(args.run_dir)
    kind = rundir.load_config().method.kind
    check_supported(kind)
    ws, state = _trained_model(args.run_dir, args.client)
    set_trainable_state(ws.model, state)
    virtual, vocab = prompt_embeddings(ws.model)
    neighbours = nearest_tokens(virtual, vocab, ws.tokenizer, args.top_k)
    last = list_checkpoints(rundir.checkpoints)[-1].name
    result = {
        "run": str(rundir.root),
        "round": int(last.removeprefix("round-")),
        "method": kind,
        "client": args.client,
        "k": args.top_k,
        **inspect_json(virtual, vocab, neighbours),
    }
    (rundir.root / "inspect.json").write_text(json.dumps(result, indent=2) + "\n")
    title = escape(f"{rundir.root} · {kind} · {len(neighbours)} virtual tokens")
    Console().print(neighbours_table(neighbours, title))
    say(console, f"wrote {rundir.root / 'inspect.json'}")
    return 0


def _data(args: argparse.Namespace, console: Console) -> int:
    from fedllm.data.survey import survey_partition
    from fedllm.model.load import load_tokenizer
    from fedllm.report.partition import heterogeneity_table, plot_label_heatmap, summary_table

    config = load_config(args.config, args.overrides)
    out: Path = args.out or Path("runs") / f"partition-{args.config.stem}"
    check_writable(out, "--out")
    if (out / "partition.json").exists() and not args.overwrite:
        raise ConfigError(
            f"{out} holds an earlier partition.json; pass --overwrite to replace it, or "
            "choose another --out"
        )
    tokenizer = load_tokenizer(config.model)
    stats = survey_partition(config.data, tokenizer, config.seed, config.privacy.per_record())
    title = f"{args.config.name} · data.partition = {config.data.partition!r}"
    stdout = Console()
    stdout.print(heterogeneity_table(stats, escape(title)))
    stdout.print(summary_table(stats))
    for cid, why in stats.dropped.items():
        say(console, f"dropped {cid}: {why}")
    out.mkdir(parents=True, exist_ok=True)
    result = {"config": str(args.config), "seed": config.seed, "data": config.data.model_dump()}
    (out / "partition.json").write_text(json.dumps({**result, **stats.to_json()}, indent=2) + "\n")
    say(console, f"wrote {out / 'partition.json'}")
    if stats.label_field is None:
        console.print("no labels (no partition_by field, too few texts for topics): no heat map")
    else:
        say(console, f"wrote {plot_label_heatmap(stats, out / 'heatmap.png', title)}")
    return 0


def _deploy(args: argparse.Namespace, console: Console) -> int:
    from fedllm.deploy.launch import run_on_flower

    if args.nodes is not None and args.nodes < 1:
        raise ConfigError(f"--nodes = {args.nodes}: must be at least 1")
    nodes = [] if args.nodes is None else [f"runtime.nodes={args.nodes}"]
    flower = ["runtime.engine=flower", "runtime.superlink=none", *nodes]
    config = load_config(args.config, [*args.overrides, *flower])
    out: Path = args.out or Path("runs") / args.config.stem
    reporter = _reporter(args.quiet, console)
    return _exit_status(run_on_flower(config, out, args.overwrite, reporter), console)


def _certs(args: argparse.Namespace, console: Console) -> int:
    """``fedllm certs superlink | node | roster``: bad input is a ConfigError saying what
    would be valid."""
    handler = {
        "superlink": _certs_superlink,
        "node": _certs_node,
        "roster": _certs_roster,
    }[args.certs_command]
    try:
        return handler(args, console)
    except FileExistsError as err:
        raise ConfigError(f"{err}; pass --overwrite to replace it") from None
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _certs_superlink(args: argparse.Namespace, console: Console) -> int:
    from fedllm.deploy.certs import DEFAULT_HOSTS, make_superlink_certs, superlink_hosts

    hosts = args.host or list(DEFAULT_HOSTS)
    files = make_superlink_certs(args.out, hosts, overwrite=args.overwrite, days=args.days)
    say(
        console,
        f"wrote the CA certificate {files.ca_cert}: give it to every node "
        "(--root-certificates) and to `flwr` (root-certificates in FLWR_HOME/config.toml)",
    )
    say(console, f"wrote the CA key {files.ca_key}: it only signs; keep it offline")
    say(
        console,
        f"wrote the SuperLink's {files.server_cert} and {files.server_key} (for "
        f"{', '.join(superlink_hosts(hosts))}): they stay on this machine "
        "(--ssl-certfile, --ssl-keyfile)",
    )
    return 0


def _certs_node(args: argparse.Namespace, console: Console) -> int:
    from fedllm.deploy.certs import make_node_key

    files = make_node_key(args.out, args.name, overwrite=args.overwrite)
    say(
        console,
        f"wrote {files.private}: this node's private key (--auth-supernode-private-key, "
        "auth-key in --node-config); it never leaves this machine",
    )
    say(
        console,
        f"wrote {files.public}: only this file leaves this machine, to the operator, who "
        f"registers it (`flwr supernode register {files.public.name} CONNECTION`) and puts "
        f"it in the roster (`fedllm certs roster roster.toml --client NAME={files.public.name}`)",
    )
    return 0


def _certs_roster(args: argparse.Namespace, console: Console) -> int:
    from fedllm.deploy.certs import client_key_files, write_roster

    keys = client_key_files(args.client)
    path = write_roster(args.out_file, keys, overwrite=args.overwrite)
    say(
        console,
        f"wrote {path} ({len(keys)} clients): the secagg.roster; give the same file to the "
        "server and every node",
    )
    return 0


def _add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    from fedllm.deploy.gateway import add_gateway_arguments

    add_gateway_arguments(parser)


def _gateway(args: argparse.Namespace, console: Console) -> int:
    from fedllm.deploy.gateway import run_gateway

    say(console, f"fleet gateway on {args.listen} -> SuperLink on 127.0.0.1:{args.superlink_port}")
    try:
        run_gateway(args)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return 0


def _he_keys(args: argparse.Namespace, console: Console) -> int:
    from fedllm.deploy.he_keys import make_he_keys
    from fedllm.secure.he.ckks import HEUnavailable

    try:
        files = make_he_keys(args.out, overwrite=args.overwrite)
    except (HEUnavailable, ValueError) as err:  # ValueError: a link or non-file in the way
        raise ConfigError(str(err)) from None
    except FileExistsError as err:
        raise ConfigError(f"{err}; pass --overwrite to replace the files in {args.out}") from None
    say(console, f"wrote {files.secret} (every node's he.secret_context; keep it from the server)")
    say(console, f"wrote {files.public} (the server's he.public_context)")
    return 0


_HANDLERS = {
    "run": _run,
    "resume": _resume,
    "eval": _eval,
    "audit": _audit,
    "attack": _attack,
    "generate": _generate,
    "matrix": _matrix,
    "export": _export,
    "report": _report,
    "config": _config,
    "select-prompt": _select_prompt,
    "inspect": _inspect,
    "data": _data,
    "deploy": _deploy,
    "certs": _certs,
    "he-keys": _he_keys,
    "gateway": _gateway,
}

if __name__ == "__main__":
    sys.exit(main())
