"""Write trained states as Hugging Face directories that transformers/peft load.

An export is written into a temporary folder beside the target and then moved in
file by file, so a failure leaves the target as it was. Only the files an export
writes are replaced: the target's other files stay. ``fedllm.json`` lists the files
of the export, so a later export into the same folder removes the earlier one's
files (an adapter replacing a merged model leaves no stale weights behind).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fedllm.federation.rundir import RunDirError, check_writable
from fedllm.federation.setup import Workspace
from fedllm.model.state import set_trainable_state
from fedllm.types import Params

INFO_FILE = "fedllm.json"


def check_export_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that can't be written, or a non-empty one unless ``overwrite``.

    Raises:
        RunDirError: naming the folder, what is in it and what to do.
    """
    check_writable(target, "--to")
    if not target.exists() or overwrite:
        return
    held = sorted(p.name for p in target.iterdir())
    if held:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise RunDirError(
            f"--to {target} is not empty (it holds {shown}); refusing to write into it: "
            "choose a new or empty folder, or pass --overwrite to replace only the files "
            "an export writes (the folder's other files are kept)"
        )


def export_states(ws: Workspace, states: Iterable[tuple[str, Params]], target: Path) -> None:
    """Export the global state (key ``""``) to ``target``, or each client's state to
    ``target/clients/<id>`` (local mode). Each directory also gets the tokenizer
    and a ``fedllm.json`` naming the base model and method."""
    for key, params in states:
        out = target if key == "" else target / "clients" / key
        export_one(ws, params, out)


def export_one(ws: Workspace, params: Params, out: Path, merge: bool = False) -> None:
    """Load ``params`` into the model and save it to ``out`` (merged into a plain model
    if asked), replacing only the files an export writes.

    Raises:
        MethodError: if the method cannot be merged (before anything is written).
    """
    set_trainable_state(ws.model, params)
    merged = ws.method.merged(ws.model) if merge else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.export-") as tmp:
        staging = Path(tmp)
        if merged is not None:
            merged.save_pretrained(staging)
        else:
            ws.method.export(ws.model, staging)
        ws.tokenizer.save_pretrained(staging)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        info = {
            "base_model": ws.config.model.name,
            "method": ws.config.method.kind,
            "merged": merge or ws.config.method.kind == "full",
            "files": sorted([*files, INFO_FILE]),
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _move_in(staging, out)


def exported_files(folder: Path) -> list[str]:
    """The files (relative paths) the export in ``folder`` wrote, from its fedllm.json;
    empty when the folder holds no readable export record."""
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        return []
    files = info.get("files", []) if isinstance(info, dict) else []
    return [f for f in files if isinstance(f, str) and _inside(folder, f)]


def _move_in(staging: Path, out: Path) -> None:
    """Remove the previous export's files from ``out``, then move the new ones in.

    A folder in the way of a new file is found before anything in ``out`` changes.
    """
    new = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    blocked = next((relative for relative in new if (out / relative).is_dir()), None)
    if blocked is not None:
        raise RunDirError(
            f"cannot export {blocked} into {out}: a folder of that name is in the way"
        )
    out.mkdir(parents=True, exist_ok=True)
    for old in exported_files(out):
        stale = out / old
        if stale.is_file():
            stale.unlink()
    for relative in new:
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, out / relative)


def _inside(folder: Path, relative: str) -> bool:
    """Whether ``relative`` names a path inside ``folder`` (a hand-edited fedllm.json
    must not make an export delete files elsewhere)."""
    root = folder.resolve()
    return root in (folder / relative).resolve().parents
