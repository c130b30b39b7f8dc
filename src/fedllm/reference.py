"""The config reference in the README, generated from the schema.

``python -m fedllm.reference`` rewrites the block between the markers in
README.md; a test fails when the README and the schema disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fedllm.config import NONE, Config

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def config_reference() -> str:
    """Markdown tables: one per section, one row per key (default and meaning)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue
        lines.append(f"| `{name}` | `{_show(field.default)}` | {field.description or ''} |")
    blocks = ["\n".join(lines)]
    for section, field in Config.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        rows = [f"**[{section}]**", "", "| key | default | meaning |", "|---|---|---|"]
        for key, sub in model.model_fields.items():
            default = sub.default_factory() if sub.default_factory else sub.default  # type: ignore[call-arg]
            rows.append(f"| `{key}` | `{_show(default)}` | {sub.description or ''} |")
        blocks.append("\n".join(rows))
    return "\n\n".join(blocks)


def render_readme(text: str) -> str:
    """``text`` with the reference block replaced by a fresh one."""
    if START not in text or END not in text:
        raise ValueError(f"README lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{config_reference()}\n{END}{tail}"


def _show(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


if __name__ == "__main__":
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    readme.write_text(render_readme(readme.read_text()))
    print(f"updated {readme}")
