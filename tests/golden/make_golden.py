"""Golden metrics: a matrix of tiny runs whose numbers must not move.

Each case runs the shipped tiny recipe with overrides through the same entry
points the CLI uses (``fedllm run`` / ``resume`` / ``select-prompt``), then keeps

* every ``metrics.jsonl`` line without wall-clock times and memory readings,
* ``summary.json`` without times, memory and paths,
* a SHA-256 of every tensor the run leaves behind (the last checkpoint, per-client
  state, the exported final model), by file and tensor name.

``--write`` records them under ``tests/golden/cases/``; ``--check`` runs the
matrix again and compares (exit 1 and a list of what moved). A refactor must leave
them unchanged; a change in numbers that an issue asks for regenerates them in a
commit of its own that says why.

Floating-point results depend on the CPU (``run.threads`` is fixed to 1 here), so
``--check`` has two modes:

* portable (the default, any machine): structure, keys, names, counts, strings,
  integers, tensor dtypes and shapes exact; floats within ``FLOAT_RTOL`` relative
  (``FLOAT_ATOL`` near zero); tensor digests not compared; byte counts exact except
  the ones :data:`FLOAT_TEXT_BYTES` names, which count messages carrying floats as
  text (their length follows the digits), compared within ``FLOAT_TEXT_RTOL``;
* ``--exact``: everything bit for bit, tensor digests included: on the machine that
  wrote the files (a refactor is checked there, against files recorded on the commit
  before it).

Usage::

    python tests/golden/make_golden.py --write [CASE ...]
    python tests/golden/make_golden.py --check [--exact] [CASE ...] [--ignore KEY ...]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from safetensors.torch import load_file  # noqa: E402

from fedllm.config import load_config  # noqa: E402
from fedllm.federation.runner import resume, run  # noqa: E402
from fedllm.prompts.session import run_selection  # noqa: E402
from tests.support.runs import TINY, InterruptAfter, stable  # noqa: E402

CASES_DIR = Path(__file__).resolve().parent / "cases"
COMMON = ("run.threads=1", "run.checkpoint_every=1")
PUBLIC = ('public.source="pydoc"', "public.max_examples=40", "public.max_eval_examples=6")
VOLATILE_SUMMARY = {
    "wall_s",
    "run_dir",
    "final_dir",
    "peak_rss_mb",
    "tokens_per_s",
    "label_tokens_per_s",
    "mfu",
}

MATRIX: dict[str, tuple[str, ...]] = {
    "fedavg_lora": (),
    "full": ("method.kind=full",),
    "prompt": ("method.kind=prompt", "method.num_virtual_tokens=4"),
    "prefix": ("method.kind=prefix", "method.num_virtual_tokens=4"),
    "ptuning": (
        "method.kind=ptuning",
        "method.num_virtual_tokens=4",
        "method.encoder_hidden_size=16",
    ),
    "ia3": ("method.kind=ia3",),
    "adapter": ("method.kind=adapter", "method.adapter_size=8"),
    "personal_prompt": (
        "method.kind=prompt",
        "method.num_virtual_tokens=4",
        "personal.prompt_tokens=2",
    ),
    "personal_keys": ("personal.keys=['*lora_B*']",),
    "hetero_rank_pad": ("method.rank_min=1", "method.rank_aggregation=padded_deltas"),
    "hetero_rank_per_rank": ("method.rank_min=1", "method.rank_aggregation=per_rank"),
    "hetero_rank_hetlora": ("method.rank_min=1", "method.rank_aggregation=hetlora"),
    "scaffold": ("client.drift_correction=scaffold", "client.optimizer=sgd", "client.lr=0.05"),
    "fednova": ("server.normalize=fednova_steps", "client.local_steps_min=1"),
    "fednova_sgd": (
        "server.normalize=fednova",
        "client.local_steps_min=1",
        "client.optimizer=sgd",
        "client.lr=0.05",
        "client.momentum=0.5",
        "client.lr_schedule=cosine",
    ),
    "fedprox": ("client.prox_mu=0.1",),
    "fedadam": ("server.optimizer=fedadam", "server.lr=0.05"),
    "nesterov": ("server.optimizer=nesterov", "server.lr=0.7", "server.momentum=0.9"),
    "clip": ("pipeline.clip_norm=0.05",),
    "public": (
        *PUBLIC,
        "public.warmup_steps=4",
        "public.server_steps=2",
        "public.server_weight=0.25",
        "public.mix_ratio=0.25",
    ),
    "keep_optimizer_state": ("client.keep_optimizer_state=true",),
    "diloco": (
        "client.keep_optimizer_state=true",
        "client.lr_schedule_span=run",
        "client.lr_schedule=cosine",
        "client.warmup_steps=1",
        "server.weighting=uniform",
        "server.optimizer=nesterov",
        "server.lr=0.7",
        "server.momentum=0.9",
    ),
    "median": ("server.aggregator=median", "server.clients_per_round=3"),
    "local_mode": ("federation.mode=local",),
    "local_mode_public_mix": ("federation.mode=local", *PUBLIC, "public.mix_ratio=0.25"),
    "centralized_mode": ("federation.mode=centralized",),
    "trace_sampling": ("server.sampling=trace", "server.availability=0.6", "server.rounds=3"),
    "size_sampling": ("server.sampling=size",),
    "fedavgm_uniform_weights": (
        "server.optimizer=fedavgm",
        "server.momentum=0.9",
        "server.weighting=uniform",
    ),
}
RESUMED = {
    "resume_fedadam": ("server.optimizer=fedadam", "server.lr=0.05", "server.rounds=3"),
    "resume_scaffold_personal": (
        "client.drift_correction=scaffold",
        "personal.keys=['*lora_B*']",
        "server.rounds=3",
    ),
}
SELECTION = {
    "hard_prompt": (
        'hard_prompt.templates=["Answer briefly.", "You are a helpful assistant."]',
        "hard_prompt.max_eval_examples=2",
        "hard_prompt.mutation_rounds=1",
        "hard_prompt.mutations_per_round=1",
        "data.num_clients=3",
    ),
}


def tensor_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of each tensor in every safetensors file under ``root``, by
    ``relative/path.safetensors:name`` (file bytes would also hash metadata)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*.safetensors")):
        rel = path.relative_to(root).as_posix()
        for name, tensor in sorted(load_file(path).items()):
            digest = hashlib.sha256(tensor.contiguous().view(-1).view(dtype=_u8()).numpy())
            out[f"{rel}:{name}"] = f"{tensor.dtype}{list(tensor.shape)}:{digest.hexdigest()}"
    return out


def _u8() -> Any:
    import torch

    return torch.uint8


def run_case(overrides: tuple[str, ...], out: Path, interrupt: bool) -> dict[str, Any]:
    """Train one case into ``out``; with ``interrupt``, stop after round 2 and resume."""
    config = load_config(TINY, [*COMMON, *overrides])
    if interrupt:
        with contextlib.suppress(KeyboardInterrupt):
            run(config, out, reporter=InterruptAfter(2))
        result = resume(out)
    else:
        result = run(config, out)
    checkpoints = sorted((out / "checkpoints").iterdir())
    summary = {k: v for k, v in result.summary.items() if k not in VOLATILE_SUMMARY}
    return {
        "overrides": list(overrides),
        "records": stable(result.records),
        "summary": stable(summary),
        "tensors": {
            "checkpoint": tensor_hashes(checkpoints[-1]),
            "final": tensor_hashes(out / "final"),
        },
    }


def selection_case(overrides: tuple[str, ...], out: Path) -> dict[str, Any]:
    """Run one hard-prompt selection into ``out``."""
    config = load_config(TINY, [*COMMON, *overrides])
    result = run_selection(config, out)
    kept = {k: v for k, v in result.result.items() if k not in VOLATILE_SUMMARY}
    for scoring_round in kept.get("rounds", []):
        scoring_round.pop("seconds", None)  # wall-clock time
    return {"overrides": list(overrides), "result": stable(kept)}


def all_cases() -> dict[str, Callable[[Path], dict[str, Any]]]:
    """Every case by name: a function of its output folder."""
    cases: dict[str, Callable[[Path], dict[str, Any]]] = {}
    for name, overrides in MATRIX.items():
        cases[name] = lambda out, o=overrides: run_case(o, out, interrupt=False)
    for name, overrides in RESUMED.items():
        cases[name] = lambda out, o=overrides: run_case(o, out, interrupt=True)
    for name, overrides in SELECTION.items():
        cases[name] = lambda out, o=overrides: selection_case(o, out)
    return cases


FLOAT_RTOL = 1e-5
"""Portable check: relative tolerance of a float (another CPU moved them ~1e-7)."""
FLOAT_ATOL = 1e-9
"""Portable check: absolute tolerance of a float near zero."""
FLOAT_TEXT_RTOL = 0.05
"""Portable check: relative tolerance of a byte count of messages carrying floats as
text, a digit or two per float (928 vs 932 and 308 vs 316 bytes seen on two CPUs)."""
FLOAT_TEXT_BYTES = {"hard_prompt": frozenset({"bytes_up"})}
"""Per case, the byte counts of messages that carry floats as JSON text (the hard
prompt's clients send their losses so): their length follows the values' digits."""


@dataclass(frozen=True)
class Comparison:
    """How values are compared.

    Attributes:
        exact: bit for bit (tensor digests included); else the portable mode.
        ignore: keys not compared.
        float_text: keys whose integers count float text (portable: within
            ``FLOAT_TEXT_RTOL``).
    """

    exact: bool = True
    ignore: frozenset[str] = frozenset()
    float_text: frozenset[str] = frozenset()


def differences(expected: Any, got: Any, path: str, how: Comparison) -> list[str]:
    """Where ``got`` differs from ``expected`` (dotted paths), as ``how`` compares."""
    if isinstance(expected, dict) and isinstance(got, dict):
        out: list[str] = []
        for key in sorted(expected.keys() | got.keys()):
            if key in how.ignore:
                continue
            where = f"{path}.{key}" if path else str(key)
            if key not in got:
                out.append(f"{where}: missing (expected {expected[key]!r:.80})")
            elif key not in expected:
                out.append(f"{where}: unexpected {got[key]!r:.80}")
            elif not how.exact and key in how.float_text:
                out.extend(_float_text_difference(expected[key], got[key], where))
            else:
                out.extend(differences(expected[key], got[key], where, how))
        return out
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        return [
            d
            for i, (e, g) in enumerate(zip(expected, got, strict=True))
            for d in differences(e, g, f"{path}[{i}]", how)
        ]
    if not how.exact and _same_portably(expected, got):
        return []
    return [] if expected == got else [f"{path}: expected {expected!r:.80}, got {got!r:.80}"]


def _same_portably(expected: Any, got: Any) -> bool:
    """Floats within tolerance; tensor records by dtype and shape; the rest exactly."""
    if type(expected) is float and type(got) is float:
        return math.isclose(expected, got, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL)
    if isinstance(expected, str) and isinstance(got, str) and TENSOR.fullmatch(expected):
        return expected.rsplit(":", 1)[0] == got.rsplit(":", 1)[0]
    return bool(expected == got)


def _float_text_difference(expected: Any, got: Any, where: str) -> list[str]:
    if not (type(expected) is int and type(got) is int):
        return [f"{where}: expected a byte count {expected!r:.80}, got {got!r:.80}"]
    if abs(expected - got) <= FLOAT_TEXT_RTOL * max(abs(expected), 1):
        return []
    return [f"{where}: expected {expected}, got {got} bytes (floats as text)"]


TENSOR = re.compile(r"[a-z0-9.]+\[[0-9, ]*\]:[0-9a-f]{64}")
"""A tensor record of :func:`tensor_hashes`: ``dtype[shape]:sha256``."""


def contents(case: dict[str, Any]) -> dict[str, list[str]]:
    """A case's tensor hashes by group, as sorted lists of ``name:hash`` without paths."""
    return {
        group: sorted(
            f"{key.split('.safetensors:', 1)[-1]}:{digest}" for key, digest in hashes.items()
        )
        for group, hashes in case["tensors"].items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="record the golden files")
    action.add_argument("--check", action="store_true", help="compare against them")
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--ignore", action="append", default=[], help="a key not to compare")
    parser.add_argument(
        "--exact",
        action="store_true",
        help="bit for bit, tensor digests included (on the machine that wrote the files); "
        "default: portable (floats within a relative 1e-5, digests not compared)",
    )
    parser.add_argument(
        "--by-content",
        action="store_true",
        help="compare tensor hashes as a multiset, ignoring file paths (a layout change)",
    )
    args = parser.parse_args(argv)
    cases = all_cases()
    unknown = [c for c in args.cases if c not in cases]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {sorted(cases)}")
    names = args.cases or list(cases)
    CASES_DIR.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            got = json.loads(json.dumps(cases[name](Path(tmp) / name)))
        path = CASES_DIR / f"{name}.json"
        if args.write:
            path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
            print(f"wrote {path.relative_to(ROOT)}", flush=True)
            continue
        if not path.exists():
            print(f"{name}: no golden file {path.relative_to(ROOT)}", flush=True)
            failed.append(name)
            continue
        expected = json.loads(path.read_text())
        if args.by_content and "tensors" in got:
            expected["tensors"], got["tensors"] = contents(expected), contents(got)
        how = Comparison(
            exact=args.exact,
            ignore=frozenset(args.ignore),
            float_text=FLOAT_TEXT_BYTES.get(name, frozenset()),
        )
        diffs = differences(expected, got, "", how)
        print(f"{name}: {'same' if not diffs else f'{len(diffs)} difference(s)'}", flush=True)
        for line in diffs[:20]:
            print(f"  {line}")
        if diffs:
            failed.append(name)
    if failed:
        print(f"moved: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
