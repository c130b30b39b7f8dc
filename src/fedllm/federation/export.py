"""Write trained states as Hugging Face directories that transformers/peft load."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from fedllm.federation.setup import Workspace
from fedllm.model.state import set_trainable_state
from fedllm.types import Params


def export_states(ws: Workspace, states: Iterable[tuple[str, Params]], target: Path) -> None:
    """Export the global state (key ``""``) to ``target``, or each client's state to
    ``target/clients/<id>`` (local mode). Each directory also gets the tokenizer
    and a ``fedllm.json`` naming the base model and method."""
    for key, params in states:
        out = target if key == "" else target / "clients" / key
        export_one(ws, params, out)


def export_one(ws: Workspace, params: Params, out: Path, merge: bool = False) -> None:
    """Load ``params`` into the model and save it (merged into a plain model if asked).

    Raises:
        MethodError: if the method cannot be merged (before anything is written).
    """
    set_trainable_state(ws.model, params)
    merged = ws.method.merged(ws.model) if merge else None
    out.mkdir(parents=True, exist_ok=True)
    if merged is not None:
        merged.save_pretrained(out)
    else:
        ws.method.export(ws.model, out)
    ws.tokenizer.save_pretrained(out)
    info = {
        "base_model": ws.config.model.name,
        "method": ws.config.method.kind,
        "merged": merge or ws.config.method.kind == "full",
    }
    (out / "fedllm.json").write_text(json.dumps(info, indent=2) + "\n")
