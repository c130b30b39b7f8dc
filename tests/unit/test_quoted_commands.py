"""Every `fedllm ...` command the README and docs quote names a real subcommand and only
options that subcommand has (issue 26: the docs once said `fedllm deploy certs`)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from fedllm.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INLINE = re.compile(r"(?<!`)`(fedllm [^`]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def quoted_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        lines = [m.group(1) for m in INLINE.finditer(text)]
        for block in FENCE.findall(text):
            lines += [line for line in block.splitlines() if line.strip().startswith("fedllm ")]
        found += [(page.name, line.split("#")[0].strip().rstrip("\\")) for line in lines]
    return found


def test_every_quoted_command_parses_against_the_real_cli() -> None:
    commands = subparsers(build_parser())
    seen = quoted_commands()
    assert len(seen) > 30
    for page, text in seen:
        words = shlex.split(text.replace("run/resume", "run"), posix=True)
        name = words[1]
        if name.startswith("-"):
            assert name in options(build_parser()), f"{page}: {text}"
            continue
        assert name in commands, f"{page}: `{text}` names no subcommand {name!r}"
        parser = commands[name]
        nested = subparsers(parser)
        if nested and len(words) > 2 and not words[2].startswith("-"):
            assert words[2] in nested, f"{page}: `{text}`: {name} has no {words[2]!r}"
            parser = nested[words[2]]
        for word in words[2:]:
            if word.startswith("--"):
                flag = word.split("=")[0]
                assert flag in options(parser), f"{page}: `{text}`: {name} has no {flag}"
