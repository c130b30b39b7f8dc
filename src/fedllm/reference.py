"""The config reference page, docs/config.md, generated from the schema.

``python -m fedllm.reference`` writes the whole page (``docs/config.md``, or the
path given); ``--check`` only compares and exits 1 when the page and the schema
disagree. A test fails when they drift.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fedllm.config import Config
from fedllm.settings import NONE

PAGE = Path("docs") / "config.md"
"""Where the page lives, relative to the repository root."""

COMMAND = "python -m fedllm.reference"

ERROR = (
    "error: config error: server.rouns is not a known key; "
    "valid keys in [server]: rounds, ... (did you mean 'rounds'?)"
)
"""What a bad key looks like at load (shown on the page)."""

INTRO = """\
# Configuration reference

<!-- Generated from the schema (src/fedllm/config.py) by `{command}`;
do not edit by hand: a test fails when this page and the schema disagree. -->

A run is one TOML file; `--set section.key=value` overrides any key (the
value is read as TOML; a bare word is a string; `none` unsets an optional
key). Unknown keys, wrong types and unknown component names fail at load
with the key, the bad value and what is allowed:

```
{error}
```

`fedllm config CONFIG --set ...` prints the resolved config. Every key below,
with its default and meaning; the recipes in `configs/` set the rest. After
changing the schema, run `{command}` to regenerate this page.
"""


def config_reference() -> str:
    """Markdown tables: one per section, one row per key (default and meaning)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        lines.append(f"| `{name}` | `{_show(default)}` | {field.description or ''} |")
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


def render_page() -> str:
    """The whole of docs/config.md: the introduction, then every section's table."""
    return f"{INTRO.format(command=COMMAND, error=ERROR)}\n{config_reference()}\n"


def _show(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Write the config reference page generated from the schema.",
    )
    parser.add_argument(
        "page", nargs="?", type=Path, default=PAGE, help=f"the page to write (default: {PAGE})"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the page differs from the schema",
    )
    args = parser.parse_args(argv)
    page: Path = args.page
    fresh = render_page()
    if args.check:
        if not page.exists() or page.read_text() != fresh:
            print(f"{page} is out of date: run `{COMMAND}` to regenerate it", file=sys.stderr)
            return 1
        print(f"{page} is up to date")
        return 0
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(fresh)
    print(f"updated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
