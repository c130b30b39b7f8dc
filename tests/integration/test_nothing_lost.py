"""A user's files are never lost, no traceback reaches them, no bad setting passes silently.

Each test drives the command line as a user would and checks what is left on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedllm.cli import NOTHING_CHANGED, main
from fedllm.federation.checkpoint import list_checkpoints
from tests.support.runs import TINY, stable


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> SHA-256 of its bytes)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-round tiny run (keeps both checkpoints); copy it before changing it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", str(TINY), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def copied(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if the base model starts loading: a check must come first."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("fedllm.federation.setup.load_base_model", refuse)
    yield


# ------------------------------------------------------------ data that is lost


def test_resume_refuses_a_folder_that_run_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(TINY, mine / "config.toml")
    (mine / "notes.txt").write_text("my notes\n")
    before = snapshot(mine)
    assert main(["resume", str(mine), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a fedllm run directory" in err and str(mine) in err.replace("\n", "")
    assert snapshot(mine) == before


def test_export_refuses_a_non_empty_folder_unless_overwrite(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "adapter_config.json").write_text('{"mine": true}\n')
    (target / "notes.txt").write_text("my notes\n")
    before = snapshot(target)
    assert main(["export", str(finished), "--to", str(target)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert snapshot(target) == before

    assert main(["export", str(finished), "--to", str(target), "--merge", "--overwrite"]) == 0
    merged = snapshot(target)
    assert (target / "notes.txt").read_text() == "my notes\n"  # the user's file stays
    assert "model.safetensors" in merged and "config.json" in merged
    info = json.loads((target / "fedllm.json").read_text())
    assert info["merged"] is True and "notes.txt" not in info["files"]
    assert set(info["files"]) == set(merged) - {"notes.txt", "adapter_config.json"}

    # an adapter export over the merged one: the merged weights go, the user's file stays
    assert main(["export", str(finished), "--to", str(target), "--overwrite"]) == 0
    left = snapshot(target)
    assert "model.safetensors" not in left and "config.json" not in left
    assert json.loads((target / "adapter_config.json").read_text()).get("mine") is None
    assert (target / "notes.txt").read_text() == "my notes\n"
    fresh = tmp_path / "fresh"
    assert main(["export", str(finished), "--to", str(fresh)]) == 0
    assert snapshot(fresh) == {k: v for k, v in left.items() if k != "notes.txt"}


def test_resume_of_a_finished_run_leaves_its_records(
    copied: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(copied)
    assert main(["resume", str(copied)]) == 0
    assert "already finished" in capsys.readouterr().err
    assert snapshot(copied) == before


# ------------------------------------------------------- tracebacks, not messages


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    finished: Path, copied: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newest = list_checkpoints(copied / "checkpoints")[-1]
    weights = newest / "global.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    (copied / "summary.json").unlink()  # the run died before finishing
    assert main(["resume", str(copied), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"skipped checkpoint {newest.name}" in err and "damaged" in err
    original = [json.loads(x) for x in (finished / "metrics.jsonl").read_text().splitlines()]
    redone = [json.loads(x) for x in (copied / "metrics.jsonl").read_text().splitlines()]
    assert stable(redone) == stable(original)  # round 2 trained again, the same


def test_out_that_cannot_be_written_is_refused_before_loading(
    tmp_path: Path, no_model_load: None, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["run", str(TINY), "--out", str(a_file / "run"), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["run", str(TINY), "--out", "/proc/fedllm-run", "--quiet"]) == 2
    assert "cannot write" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["run", str(TINY), "--out", str(locked / "run"), "--quiet"]) == 2
        assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--max-new-tokens", "0", "at least 1"),
        ("--temperature", "-1", "must be 0 (greedy) or a positive"),
        ("--temperature", "nan", "must be 0 (greedy) or a positive"),
    ],
)
def test_generation_options_are_checked_before_loading(
    finished: Path,
    no_model_load: None,
    option: str,
    value: str,
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["generate", str(finished), "--prompt", "hi", option, value]) == 2
    assert words in capsys.readouterr().err


# ------------------------------------------------------- wrong settings accepted


def test_cohort_larger_than_the_federation_is_refused(
    tmp_path: Path, no_model_load: None, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = ["--set", "server.clients_per_round=9", "--out", str(tmp_path / "r")]
    assert main(["run", str(TINY), *overrides, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "clients_per_round = 9" in err and "has 4 clients" in err and "at most 4" in err
    assert not (tmp_path / "r").exists()


def test_a_run_in_which_no_round_changed_the_model_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    # every sampled client (seed 0 samples these) drops out: every round is skipped
    gone = 'server.dropout_trace={"1" = ["emotion", "trivia"], "2" = ["coding", "emotion"]}'
    argv = ["run", str(TINY), "--set", gone, "--out", str(out), "--quiet"]
    assert main(argv) == NOTHING_CHANGED
    assert "no round changed the model" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_applied"] == 0 and "no round changed" in summary["warning"]
    assert summary["skipped_rounds"] == [1, 2]


def test_resume_refuses_zero_rounds(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resume", str(finished), "--rounds", "0"]) == 2
    assert "--rounds = 0: must be at least 1" in capsys.readouterr().err


# ------------------------------------------------------------ messages that mislead


def test_brackets_in_messages_are_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["config", str(TINY), "--set", "server.rouns=3"]
    assert main(argv) == 2
    assert "valid keys in [server]:" in capsys.readouterr().err.replace("\n", " ")


def test_top_level_key_under_a_section_is_pointed_to(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(TINY), "--set", "run.seed=1"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "'seed' is a key of the top level (--set seed=...)" in err


def test_an_export_blocked_by_a_folder_changes_nothing(tmp_path: Path) -> None:
    from fedllm.federation.export import _move_in
    from fedllm.federation.rundir import RunDirError

    out, staging = tmp_path / "out", tmp_path / "staging"
    (out / "tokenizer.json").mkdir(parents=True)  # a folder where the export puts a file
    (out / "old.bin").write_text("previous export")
    (out / "fedllm.json").write_text(json.dumps({"files": ["old.bin", "fedllm.json"]}))
    staging.mkdir()
    (staging / "tokenizer.json").write_text("{}")
    before = snapshot(out)
    with pytest.raises(RunDirError, match="tokenizer.json into .*a folder of that name"):
        _move_in(staging, out)
    assert snapshot(out) == before
