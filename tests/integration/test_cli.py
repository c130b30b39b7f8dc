"""The command line as a user drives it, on the tiny recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedllm.cli import main
from tests.support.runs import TINY

COMMANDS = [
    "run",
    "resume",
    "eval",
    "generate",
    "export",
    "report",
    "config",
    "select-prompt",
    "inspect",
    "data",
]


def test_help_explains_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: fedllm " + command in capsys.readouterr().out


def test_user_journey(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "my-run"
    assert main(["run", str(TINY), "--set", "server.rounds=1", "--out", str(out), "--quiet"]) == 0
    assert main(["resume", str(out), "--rounds", "2", "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]

    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["round"] == 2
    assert evaluated["clients_loss_mean"] == pytest.approx(records[-1]["eval"]["clients_loss_mean"])

    assert main(["generate", str(out), "--prompt", "Hello there", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip() != ""

    assert main(["export", str(out), "--to", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "adapter_config.json").is_file()
    assert (tmp_path / "exported" / "tokenizer_config.json").is_file()

    assert main(["report", str(out)]) == 0
    for name in ("perplexity.png", "train_loss.png", "communication.png"):
        assert (out / "report" / name).stat().st_size > 1000


def test_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nrouns = 3\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "server.rouns is not a known key" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "not a fedllm run directory" in capsys.readouterr().err
