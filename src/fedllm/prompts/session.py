"""From a config to a finished selection: the model, the clients, the output folder."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from fedllm.components import load_builtin
from fedllm.config import Config, dump_config
from fedllm.data import build_client_records
from fedllm.data.instruct import InstructedEncoder
from fedllm.data.sources import DataError
from fedllm.federation.rundir import MARKER, RunDir, check_writable
from fedllm.model.device import input_device, resolved_dtype, use_bf16
from fedllm.model.load import load_base_model, load_tokenizer
from fedllm.prompts.candidates import initial_candidates
from fedllm.prompts.score import PromptClient, ScoreFn, model_scorer, prompt_handler
from fedllm.prompts.select import Selection, SelectionError, select_prompt
from fedllm.runtime.dropout import dropout_plan
from fedllm.runtime.simulation import SimulationEngine

RESULT_FILE = "hard_prompt.json"
RUN_SECTIONS = ("seed", "model", "method", "data")
"""What a trained run fixes when its model scores (``--run``): same model, same held-out split."""


@dataclass
class SelectionRun:
    """A finished selection and where it was written.

    Attributes:
        out: the output folder (``hard_prompt.json``, ``config.toml``).
        selection: the ranking, scores and bytes.
        result: the contents of ``hard_prompt.json``.
    """

    out: Path
    selection: Selection
    result: dict[str, Any]


def run_selection(
    config: Config,
    out: str | Path,
    run_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> SelectionRun:
    """Select an instruction for ``config``'s federation and write the result to ``out``.

    Args:
        config: the configuration; ``[hard_prompt]`` drives the selection.
        out: output folder; must be new, empty, or (with ``overwrite``) an earlier
            selection's, which is then replaced.
        run_dir: score with this trained run's latest model instead of the base
            model; the run's seed, model, method and data then replace ``config``'s.
        log: receives one progress line per step.
        overwrite: replace an earlier selection in ``out`` (as ``fedllm run --overwrite``).

    Raises:
        SelectionError: an unusable output folder, no scorable client, a bad reply.
        DataError: text data (instructions need chat data), or unusable data.
    """
    started = time.perf_counter()
    say = log or (lambda _: None)
    out = Path(out)
    check_out_dir(out, overwrite)
    load_builtin()
    if config.run.threads is not None:
        torch.set_num_threads(config.run.threads)
    trained_round = None
    if run_dir is not None:
        config, replaced = config_for_run(config, run_dir)
        if replaced:
            say(f"using the run's {', '.join(replaced)} (they differ from the config given)")
        tokenizer, score_fn, trained_round = trained_scorer(config, Path(run_dir))
    else:
        tokenizer = load_tokenizer(config.model)
        config = resolved_dtype(config, torch.device("cpu"))  # scored on the CPU
        model = load_base_model(config.model, config.seed)
        bf16 = use_bf16(config.client.bf16, input_device(model))
        pad_id = int(tokenizer.pad_token_id)
        score_fn = model_scorer(model, pad_id, config.eval.batch_size, bf16=bf16)
    clients, skipped = prompt_clients(config, tokenizer, score_fn)
    for cid, why in skipped.items():
        say(f"client {cid} skipped: {why}")
    candidates = initial_candidates(config.hard_prompt)
    say(f"{len(candidates)} candidate instruction(s), {len(clients)} client(s)")
    engine = SimulationEngine(prompt_handler(clients), dropout_plan(config.server, config.seed))
    ids = [c.client_id for c in clients]
    selection = select_prompt(candidates, ids, engine, config.hard_prompt, config.seed, say)
    result = {
        **selection.to_json(),
        "placement": config.hard_prompt.placement,
        "model": config.model.name,
        "run": None if run_dir is None else str(run_dir),
        "run_round": trained_round,
        "seed": config.seed,
        "examples": {c.client_id: c.num_examples for c in clients},
        "skipped_clients": skipped,
        "wall_s": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(dump_config(config))
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return SelectionRun(out, selection, result)


def prompt_clients(
    config: Config, tokenizer: PreTrainedTokenizerBase, score_fn: ScoreFn
) -> tuple[list[PromptClient], dict[str, str]]:
    """One client per client of the federation, on its held-out (eval) records.

    The split is the one training uses (:func:`fedllm.data.build_client_records`);
    each client keeps its first ``hard_prompt.max_eval_examples`` scorable chats.

    Returns:
        The clients, and client id -> why it was left out.

    Raises:
        DataError: the source holds plain text, not chats.
    """
    raw = build_client_records(config.data, config.seed)
    if raw.kind != "chat":
        raise DataError(
            f"hard prompt selection needs chat data (records with 'messages'); "
            f"data.source = {config.data.source!r} gives plain text. Use a chat source "
            "(chitchat, chatterbot) or a .jsonl file with 'messages' or 'prompt'/'response'"
        )
    hp = config.hard_prompt
    clients, skipped = [], dict(raw.dropped)
    for cid, split in raw.clients.items():
        chats = [record["messages"] for record in split.eval]
        encoder = InstructedEncoder(
            chats, tokenizer, config.data.seq_len, hp.placement, hp.max_eval_examples
        )
        if len(encoder) == 0:
            skipped[cid] = "no held-out chat keeps an assistant token within data.seq_len"
            continue
        clients.append(PromptClient(cid, encoder, score_fn))
    return clients, skipped


def config_for_run(config: Config, run_dir: str | Path) -> tuple[Config, list[str]]:
    """The run's saved config with ``config``'s ``[hard_prompt]``, and which of
    :data:`RUN_SECTIONS` the run changed."""
    saved = RunDir(run_dir).load_config()
    merged = saved.model_copy(update={"hard_prompt": config.hard_prompt})
    replaced = [name for name in RUN_SECTIONS if getattr(config, name) != getattr(saved, name)]
    return merged, replaced


def trained_scorer(config: Config, run_dir: Path) -> tuple[PreTrainedTokenizerBase, ScoreFn, int]:
    """The run's tokenizer, a scorer with each client's model of the run's latest
    checkpoint, and that checkpoint's round."""
    from fedllm.algorithms.personal.split import PersonalSplit
    from fedllm.federation.setup import prepare
    from fedllm.federation.trained import load_trained

    ws = prepare(config, with_data=False)
    split = PersonalSplit.from_config(config.personal)
    trained = load_trained(RunDir(run_dir), ws.initial, split)
    bf16 = use_bf16(config.client.bf16, input_device(ws.model))
    score_fn = model_scorer(ws.model, ws.pad_id, config.eval.batch_size, trained.state_of, bf16)
    return ws.tokenizer, score_fn, trained.round


def check_out_dir(out: Path, overwrite: bool = False) -> None:
    """Refuse a folder holding a training run or anything but an earlier selection, and
    an earlier selection unless ``overwrite``.

    Raises:
        SelectionError: naming the folder and what to do.
        RunDirError: the folder can't be written.
    """
    check_writable(out, "--out")
    if not out.exists() or not any(out.iterdir()):
        return
    if (out / MARKER).exists():
        raise SelectionError(
            f"{out} holds a training run; writing there would replace its config.toml: "
            "choose another --out"
        )
    if not (out / RESULT_FILE).exists():
        raise SelectionError(
            f"{out} is not empty and holds no earlier prompt selection; choose another --out"
        )
    if not overwrite:
        raise SelectionError(
            f"{out} holds an earlier prompt selection; pass --overwrite to replace it, or "
            "choose another --out"
        )
