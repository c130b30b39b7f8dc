"""`fedllm select-prompt` and `fedllm inspect` end to end on the tiny recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedllm.cli import main
from fedllm.federation.rundir import RunDir
from fedllm.message import Message
from fedllm.model.load import load_tokenizer
from fedllm.prompts.score import SCORES, PromptClient
from fedllm.wire import message_bytes
from tests.support.runs import TINY, tiny_config

SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
INIT_TEXT = "hello world"
VIRTUAL_TOKENS = 5


def _select(out: Path, *extra: str) -> list[str]:
    templates = json.dumps([SMOLLM_DEFAULT, "Answer briefly."])
    sets = [
        f"hard_prompt.templates={templates}",
        "hard_prompt.max_eval_examples=2",
        "hard_prompt.mutation_rounds=1",
        "hard_prompt.mutations_per_round=1",
        "data.num_clients=3",
    ]
    return [
        "select-prompt",
        str(TINY),
        *(a for s in sets for a in ("--set", s)),
        "--out",
        str(out),
        *extra,
    ]


def test_select_prompt_writes_the_choice_and_the_score_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    replies: dict[str, list[Message]] = {}
    handle = PromptClient.handle

    def recording(client: PromptClient, message: Message) -> Message:
        reply = handle(client, message)
        replies.setdefault(client.client_id, []).append(reply)
        return reply

    monkeypatch.setattr(PromptClient, "handle", recording)
    out = tmp_path / "selection"
    assert main(_select(out)) == 0
    printed = capsys.readouterr().out
    assert "(none)" in printed and "answer loss per client" in printed and "p002" in printed
    result = json.loads((out / "hard_prompt.json").read_text())
    assert (out / "config.toml").is_file()
    rows = {row["id"]: row for row in result["candidates"]}
    assert len(rows) == 3 and rows["p002"]["round"] == 1
    assert rows["p002"]["origin"].split(" of ")[1] in {"p000", "p001"}  # a mutant of the pool
    assert result["chosen"] == result["candidates"][0] and result["chosen"]["position"] == 1
    assert sorted(r["loss"] for r in rows.values()) == [r["loss"] for r in result["candidates"]]
    # The template's own default system prompt is the chat with no instruction: same loss.
    default = rows["p000"]
    for client, loss in result["baseline"]["client_loss"].items():
        assert default["client_loss"][client] == pytest.approx(loss, rel=1e-6)
    assert set(result["clients"]) == {"emotion", "tech_support", "trivia"}
    assert result["bytes_up"] == sum(c["bytes_up"] for c in result["clients"].values())
    # Only the score tables go up: each reply is a message holding its table and nothing
    # else, and the tables' own bytes are few.
    for client, counts in result["clients"].items():
        tables = [reply.config[SCORES] for reply in replies[client]]
        assert all(isinstance(table, bytes) for table in tables)
        assert counts["bytes_up"] == sum(message_bytes(Message(config={SCORES: t})) for t in tables)
        assert 0 < sum(len(table) for table in tables) < 300
    assert all(math.isfinite(r["loss"]) for r in result["candidates"])
    # the same selection again is refused, then replaces the result with --overwrite; a
    # training run is never written into
    capsys.readouterr()
    assert main(_select(out)) == 2
    assert "pass --overwrite to replace it" in " ".join(capsys.readouterr().err.split())
    assert main(_select(out, "--overwrite")) == 0
    assert json.loads((out / "hard_prompt.json").read_text())["candidates"] == result["candidates"]
    RunDir(tmp_path / "a-run").create(tiny_config())
    capsys.readouterr()
    assert main(_select(tmp_path / "a-run")) == 2
    assert "holds a training run" in " ".join(capsys.readouterr().err.split())


def test_help_lists_the_prompt_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "select-prompt" in text and "inspect" in text


def test_inspect_refuses_a_method_without_virtual_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    RunDir(tmp_path / "lora").create(tiny_config())
    assert main(["inspect", str(tmp_path / "lora")]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "method.kind = 'lora' has no virtual tokens" in err and "'ptuning'" in err


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-round prompt-tuning run whose soft prompt barely moved from its text init."""
    out = tmp_path_factory.mktemp("prompt-run") / "run"
    sets = [
        "method.kind=prompt",
        "method.prompt_init=text",
        f'method.prompt_init_text="{INIT_TEXT}"',
        f"method.num_virtual_tokens={VIRTUAL_TOKENS}",
        "client.lr=1e-9",
        "client.local_steps=1",
        "server.rounds=1",
    ]
    argv = ["run", str(TINY), *(a for s in sets for a in ("--set", s)), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    return out


def test_inspect_finds_the_tokens_a_soft_prompt_was_initialised_from(
    prompt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(prompt_run), "--top-k", "3"]) == 0
    assert "virtual token" in capsys.readouterr().out
    result = json.loads((prompt_run / "inspect.json").read_text())
    ids = load_tokenizer("tiny")(INIT_TEXT)["input_ids"]
    expected = (ids * VIRTUAL_TOKENS)[:VIRTUAL_TOKENS]  # peft repeats the text's tokens
    tokens = result["virtual_tokens"]
    assert result["method"] == "prompt" and result["round"] == 1 and result["k"] == 3
    assert [t["nearest"][0]["token_id"] for t in tokens] == expected
    for token in tokens:
        assert len(token["nearest"]) == 3
        assert token["nearest"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)


def test_select_prompt_scores_with_a_trained_run(prompt_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "with-run"
    assert main(_select(out, "--run", str(prompt_run))) == 0
    result = json.loads((out / "hard_prompt.json").read_text())
    assert result["run"] == str(prompt_run) and result["run_round"] == 1
    # the run's data section (4 clients) replaces the 3 clients of the config given
    assert len(result["clients"]) == 4
    assert all(math.isfinite(r["loss"]) for r in result["candidates"])
