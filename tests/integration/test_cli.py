"""The command line as a user drives it, on the tiny recipe."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

from fedllm.cli import main, terminate_as_interrupt
from fedllm.config import load_config
from fedllm.federation.setup import prepare
from fedllm.model.state import set_trainable_state
from fedllm.report import plots
from fedllm.report.plots import Plot, plot_run
from tests.support.generation import greedy_reference
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
    "deploy",
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


def test_user_journey(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
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

    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "Hello there", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.strip()
    ws = prepare(load_config(out / "config.toml"), with_data=False)
    trained = load_file(out / "checkpoints" / "round-00002" / "global.safetensors")
    set_trainable_state(ws.model, trained)
    assert printed == greedy_reference(ws.model, ws.tokenizer, "Hello there", new_tokens=5)

    assert main(["export", str(out), "--to", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "adapter_config.json").is_file()
    assert (tmp_path / "exported" / "tokenizer_config.json").is_file()

    alone = tmp_path / "alone"
    local = ["--set", "federation.mode=local", "--set", "server.rounds=1"]
    assert main(["run", str(TINY), *local, "--out", str(alone), "--quiet"]) == 0
    drawn = spy_on_plots(monkeypatch)
    capsys.readouterr()
    assert main(["report", str(out), str(alone)]) == 0
    shown = capsys.readouterr()
    assert "my-run · federated · lora" in shown.out and "alone · local · lora" in shown.out
    assert "nothing was sent: no communication plot" in shown.err
    perplexity, train_loss, communication = drawn["my-run"]
    assert perplexity.series["clients (mean)"] == [
        (r["round"], r["eval"]["clients_ppl_mean"]) for r in records
    ]
    assert perplexity.series["global test split"] == [
        (r["round"], r["eval"]["test_ppl"]) for r in records
    ]
    assert train_loss.series["train loss"] == [(r["round"], r["train_loss"]) for r in records[1:]]
    assert [h for _, h in communication.series["up"]] == [r["bytes_up"] / 1e6 for r in records[1:]]
    assert [p.path for p in drawn["my-run"]] == [
        out / "report" / name for name in ("perplexity.png", "train_loss.png", "communication.png")
    ]
    assert all(p.xticks and all(t == int(t) for t in p.xticks) for p in drawn["my-run"])
    assert drawn["alone"][-1].path is None and (alone / "report" / "perplexity.png").is_file()
    assert not (alone / "report" / "communication.png").exists()
    assert (out / "report" / "comparison.png").is_file()


def spy_on_plots(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Plot]]:
    """What ``fedllm report`` plots, by run name (each run's ``plot_run`` result)."""
    drawn: dict[str, list[Plot]] = {}

    def spy(records: list[dict[str, Any]], out_dir: Path, title: str) -> list[Plot]:
        drawn[title] = plot_run(records, out_dir, title)
        return drawn[title]

    monkeypatch.setattr(plots, "plot_run", spy)
    return drawn


def test_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nrouns = 3\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "server.rouns is not a known key" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "nowhere is not a folder; give a run directory" in capsys.readouterr().err


def test_an_interrupt_says_what_it_leaves(tmp_path: Path) -> None:
    """Before the first checkpoint there is nothing to continue (issue 26)."""
    from fedllm.cli import build_parser, interrupted_message

    out = tmp_path / "run"
    args = build_parser().parse_args(["run", str(TINY), "--out", str(out)])
    assert "before the first checkpoint: nothing" in interrupted_message(args)
    (out / "checkpoints" / "round-00003").mkdir(parents=True)
    (out / "checkpoints" / "round-00003" / "state.json").write_text("{}")
    said = interrupted_message(build_parser().parse_args(["resume", str(out)]))
    assert "checkpoint of round 3 is kept" in said and f"fedllm resume {out}" in said


def test_sigterm_stops_a_run_like_ctrl_c_and_keeps_its_checkpoint(tmp_path: Path) -> None:
    """`kill` (what a service manager sends) ends `fedllm run` as Ctrl-C does: the last
    checkpoint is kept and the message says how to continue; the handler is put back."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedllm.cli", "run", str(TINY), "--out", str(out)]
    command += ["--quiet", "--set", "server.rounds=200", "--set", "run.checkpoint_every=1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # round 1 done
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted: the checkpoint of round" in err and "fedllm resume" in err
    assert any((out / "checkpoints").iterdir())
    before = signal.getsignal(signal.SIGTERM)
    with terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_he_keys_writes_a_private_secret_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedllm.secure.he import ckks as he

    out = tmp_path / "keys"
    assert main(["he-keys", str(out)]) == 0
    secret, public = out / "he-secret.ctx", out / "he-public.ctx"
    assert secret.stat().st_mode & 0o777 == 0o600 and public.stat().st_mode & 0o777 == 0o644
    chunks = he.encrypt_vector(np.array([0.25, -1.5]), public.read_bytes())
    assert np.allclose(he.decrypt_vector(chunks, 2, secret.read_bytes()), [0.25, -1.5], atol=1e-6)
    with pytest.raises(he.HEKeyError):  # the public context cannot decrypt
        he.decrypt_vector(chunks, 2, public.read_bytes())
    before = secret.read_bytes()
    assert main(["he-keys", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert secret.read_bytes() == before


def test_a_loopback_deployment_with_fewer_nodes_than_clients_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One SuperNode per client on loopback: with --nodes 1 for 2 clients the other one
    never trained while the banner and summary said 2 (issue 26)."""
    argv = ["deploy", "local", str(TINY), "--set", "data.num_clients=2", "--nodes", "1"]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "set runtime.nodes = 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
