"""Hard-prompt selection without a model: aggregation, mutation, candidates, uploads,
the instructed encoding and the raw client records; soft-prompt neighbours."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from fedllm.config import ConfigError, HardPromptConfig
from fedllm.data import Example, build_client_records, build_federated_data
from fedllm.data.format import IGNORE_INDEX, encode_chats
from fedllm.data.instruct import InstructedEncoder, insert_instruction
from fedllm.data.sources import DataError
from fedllm.eval.evaluate import HeldOut
from fedllm.message import Message
from fedllm.prompts.aggregate import aggregate, client_ranks, mean_ranks, order, pooled_loss
from fedllm.prompts.candidates import builtin_candidates, initial_candidates
from fedllm.prompts.inspect import InspectError, check_supported, nearest_tokens
from fedllm.prompts.mutate import (
    CONSTRAINTS,
    add_constraint,
    normalize,
    paraphrase,
    propose,
    remove_sentence,
    reorder,
    sentences,
)
from fedllm.prompts.score import CANDIDATES, SCORES, PromptClient, Score, prompt_handler
from fedllm.prompts.select import SelectionError, select_prompt
from fedllm.prompts.session import prompt_clients
from fedllm.runtime.dropout import DropoutPlan
from fedllm.runtime.simulation import SimulationEngine
from fedllm.wire import decode_scores, encode_message, encode_texts
from tests.support.runs import tiny_config

SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
"""The system prompt SmolLM2's chat template inserts when a chat has none."""


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# ---------------------------------------------------------------- aggregation


def _tables(losses: dict[str, dict[str, float]], tokens: int = 10) -> dict[str, dict[str, Score]]:
    """client -> candidate -> Score, from per-token losses."""
    return {
        client: {cand: Score(loss * tokens, tokens) for cand, loss in row.items()}
        for client, row in losses.items()
    }


def test_mean_and_rank_disagree_as_computed_by_hand() -> None:
    # A is best on three clients but terrible on the fourth; B is a close second everywhere.
    tables = _tables(
        {
            "c1": {"A": 1.0, "B": 1.1, "C": 2.0},
            "c2": {"A": 1.0, "B": 1.1, "C": 2.0},
            "c3": {"A": 1.0, "B": 1.1, "C": 2.0},
            "c4": {"A": 10.0, "B": 1.0, "C": 2.0},
        }
    )
    # pooled: A = (1 + 1 + 1 + 10) / 4 = 3.25, B = 4.3 / 4 = 1.075, C = 2.0
    assert aggregate(tables, "mean") == pytest.approx({"A": 3.25, "B": 1.075, "C": 2.0})
    # ranks: A = (1 + 1 + 1 + 3) / 4 = 1.5, B = (2 + 2 + 2 + 1) / 4 = 1.75, C = (3+3+3+2)/4
    assert aggregate(tables, "rank") == pytest.approx({"A": 1.5, "B": 1.75, "C": 2.75})
    assert order(tables, "mean", ["A", "B", "C"]) == ["B", "C", "A"]
    assert order(tables, "rank", ["A", "B", "C"]) == ["A", "B", "C"]


def test_pooled_loss_weighs_clients_by_tokens() -> None:
    tables = {"big": {"A": Score(90.0, 90)}, "small": {"A": Score(30.0, 10)}}
    assert pooled_loss(tables, "A") == pytest.approx(120 / 100)


def test_ties_share_their_mean_rank_and_break_by_candidate_order() -> None:
    ranks = client_ranks({"A": Score(2, 1), "B": Score(1, 1), "C": Score(2, 1), "D": Score(3, 1)})
    assert ranks == {"B": 1.0, "A": 2.5, "C": 2.5, "D": 4.0}
    tied = _tables({"c1": {"X": 1.0, "Y": 1.0}, "c2": {"X": 1.0, "Y": 1.0}})
    assert mean_ranks(tied) == {"X": 1.5, "Y": 1.5}
    assert order(tied, "rank", ["Y", "X"]) == ["Y", "X"]


def test_aggregate_refuses_incomplete_tables_and_unknown_methods() -> None:
    tables = _tables({"c1": {"A": 1.0, "B": 2.0}, "c2": {"A": 1.0}})
    with pytest.raises(ValueError, match="c2 did not score the same candidates"):
        aggregate(tables, "mean")
    with pytest.raises(ValueError, match="expected one of mean, rank"):
        aggregate(_tables({"c1": {"A": 1.0}}), "median")


# ---------------------------------------------------------------- mutation


PARENTS = [
    "Answer the user's question. Keep it short.",
    "You are a helpful assistant. Reply to the user.",
    "Give a direct reply",
]


def test_mutations_are_deterministic_distinct_and_new() -> None:
    existing = [*PARENTS, "Answer the user's query. Keep it short."]
    first = propose(PARENTS, 8, seed=3, round_num=1, existing=existing)
    assert first == propose(PARENTS, 8, seed=3, round_num=1, existing=existing)
    assert len(first) == 8
    assert first != propose(PARENTS, 8, seed=4, round_num=1, existing=existing)
    assert first != propose(PARENTS, 8, seed=3, round_num=2, existing=existing)
    texts = [normalize(m.text) for m in first]
    assert len(set(texts)) == len(texts)
    assert not set(texts) & {normalize(t) for t in existing}
    for m in first:
        assert m.parent in PARENTS and m.text == m.text.strip() and m.text
        assert "  " not in m.text


def test_each_operation_makes_a_valid_string() -> None:
    rng = random.Random(0)
    text = "Answer the user's question. Keep it short."
    para = paraphrase(text, rng)
    assert para is not None and para != text and para[0].isupper()
    assert len(sentences(para)) == 2
    added = add_constraint(text, rng)
    assert added is not None and sentences(added)[:2] == sentences(text)
    assert sentences(added)[2] in CONSTRAINTS and sentences(added)[2] != "Keep it short."
    assert add_constraint("Say hi", rng) is not None  # a full stop is added first
    assert sentences(add_constraint("Say hi", rng) or "")[0] == "Say hi."
    removed = remove_sentence(text, rng)
    assert removed in sentences(text)
    assert remove_sentence("One sentence only.", rng) is None
    swapped = reorder(text, rng)
    assert swapped == "Keep it short. Answer the user's question."
    assert reorder("Alone.", rng) is None
    assert paraphrase("Nothing to swap here.", rng) is None


# ---------------------------------------------------------------- candidates


def test_candidates_from_file_templates_or_builtin(tmp_path: Path) -> None:
    path = tmp_path / "candidates.txt"
    path.write_text("# my candidates\nBe brief.\n\n  Answer kindly.  \nBe brief.\n")
    from_file = initial_candidates(HardPromptConfig(candidates_file=str(path)))
    assert [(c.id, c.text, c.origin) for c in from_file] == [
        ("p000", "Be brief.", "file"),
        ("p001", "Answer kindly.", "file"),
    ]
    listed = initial_candidates(HardPromptConfig(templates=["A.", "B."]))
    assert [c.text for c in listed] == ["A.", "B."] and listed[0].origin == "templates"
    built = initial_candidates(HardPromptConfig())
    assert [c.text for c in built] == builtin_candidates() and len(built) == 12
    assert len({c.text for c in built}) == 12
    with pytest.raises(ConfigError, match="hard_prompt.candidates_file = .*no such file"):
        initial_candidates(HardPromptConfig(candidates_file=str(tmp_path / "nope.txt")))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="has no candidate lines"):
        initial_candidates(HardPromptConfig(candidates_file=str(tmp_path / "empty.txt")))


# ---------------------------------------------------------------- instructed encoding


def test_insert_instruction_placements() -> None:
    chat = _chat("hi", "hello")
    assert insert_instruction(chat, "Be brief.", "system")[0] == {
        "role": "system",
        "content": "Be brief.",
    }
    own = [{"role": "system", "content": "Old."}, *chat]
    assert insert_instruction(own, "New.", "system")[0]["content"] == "New.\n\nOld."
    assert insert_instruction(chat, "Be brief.", "prefix")[0]["content"] == "Be brief.\n\nhi"
    assert chat == _chat("hi", "hello")  # the input is not modified
    with pytest.raises(ValueError, match="expected one of system, prefix"):
        insert_instruction(chat, "x", "suffix")


@pytest.mark.parametrize("placement", ["system", "prefix"])
def test_every_instruction_scores_the_same_answer_tokens(
    data_tokenizer: Any, placement: str
) -> None:
    chats = [
        _chat("What is the capital of France?", "Paris is the capital of France, of course."),
        _chat("word " * 60, "no answer token survives seq_len"),
        _chat("hi", "hello there, how are you doing today?"),
    ]
    encoder = InstructedEncoder(chats, data_tokenizer, seq_len=40, placement=placement)
    assert len(encoder) == 2  # the long question leaves no answer token within 40 tokens
    plain = encoder.encode(None)
    long_instruction = "Be very careful and think about the question before replying. " * 4
    for instruction in ("Be brief.", long_instruction):
        examples = encoder.encode(instruction)
        assert instruction.strip() in data_tokenizer.decode(examples[0].input_ids)
        for ex, base in zip(examples, plain, strict=True):
            assert [x for x in ex.labels if x != IGNORE_INDEX] == [
                x for x in base.labels if x != IGNORE_INDEX
            ]
            assert ex.labels[-1] != IGNORE_INDEX  # cut right after the last scored token
    assert (
        InstructedEncoder(chats, data_tokenizer, 40, placement, max_examples=1).encode(None)
        == plain[:1]
    )


def test_the_templates_default_system_prompt_equals_no_instruction(data_tokenizer: Any) -> None:
    chats = [_chat("Tell me a joke", "Why did the chicken cross the road?")]
    encoder = InstructedEncoder(chats, data_tokenizer, seq_len=64, placement="system")
    assert encoder.encode(SMOLLM_DEFAULT) == encoder.encode(None)


# ---------------------------------------------------------------- raw client records


def test_client_records_are_exactly_what_the_federated_data_tokenizes(
    data_tokenizer: Any,
) -> None:
    cfg = tiny_config().data
    raw = build_client_records(cfg, seed=5)
    data = build_federated_data(cfg, data_tokenizer, seed=5)
    assert raw.kind == "chat" and list(raw.clients) == list(data.clients)
    for cid, client in data.clients.items():
        split = raw.clients[cid]
        evals = encode_chats([r["messages"] for r in split.eval], data_tokenizer, cfg.seq_len)
        train = encode_chats([r["messages"] for r in split.train], data_tokenizer, cfg.seq_len)
        assert evals == client.eval
        assert train[: len(client.train)] == client.train
    test = encode_chats([r["messages"] for r in raw.test], data_tokenizer, cfg.seq_len)
    assert test[: cfg.max_test_examples] == data.test


def test_text_sources_are_refused_with_a_clear_error(data_tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(f"paragraph {i} of plain text" for i in range(20)))
    config = tiny_config(f"data.source={json.dumps(str(path))}", "data.partition=iid")
    with pytest.raises(DataError, match="needs chat data"):
        prompt_clients(config, data_tokenizer, _fake_scorer(data_tokenizer))


# ---------------------------------------------------------------- clients and selection


def _fake_scorer(tokenizer: Any, magic: str = "MAGIC", noise: float = 0.01) -> Any:
    """Loss 1 per answer token when the input contains ``magic``, else 2 (+ client noise)."""

    def score(client: str, examples: Sequence[Example]) -> HeldOut:
        tokens = sum(sum(x != IGNORE_INDEX for x in e.labels) for e in examples)
        text = " ".join(tokenizer.decode(e.input_ids) for e in examples)
        per_token = (1.0 if magic in text else 2.0) + noise * int(client[-1])
        return HeldOut(per_token * tokens, tokens)

    return score


def _clients(tokenizer: Any, secrets: Sequence[str], score: Any) -> list[PromptClient]:
    return [
        PromptClient(
            f"client-{i}",
            InstructedEncoder(
                [_chat(f"question {i}", secret)], tokenizer, seq_len=64, placement="system"
            ),
            score,
        )
        for i, secret in enumerate(secrets)
    ]


def test_only_scores_leave_a_client(data_tokenizer: Any) -> None:
    secret = "my account number is 99-1234-5678"
    (client,) = _clients(data_tokenizer, [secret], _fake_scorer(data_tokenizer))
    answer = client.handle(
        Message(config={CANDIDATES: encode_texts({"p000": "Be brief.", "baseline": ""})})
    )
    wire = encode_message(answer)  # everything that leaves the client
    assert secret.encode() not in wire and b"question" not in wire
    assert not answer.arrays and not answer.metrics and set(answer.config) == {SCORES}
    reply = answer.config[SCORES]
    assert isinstance(reply, bytes)
    raw = json.loads(reply)
    assert set(raw) == {"p000", "baseline"}
    for loss_sum, tokens in raw.values():
        assert isinstance(loss_sum, float) and isinstance(tokens, int)
    assert decode_scores(reply)["p000"][1] == len(data_tokenizer(secret)["input_ids"]) + 1
    for bad in (b'{"p000": [NaN, 3]}', b'{"p000": [1.0, -1]}', b'{"p000": "x"}', b"[1]"):
        with pytest.raises(ValueError):
            decode_scores(bad)


@pytest.mark.parametrize("how", ["mean", "rank"])
def test_selection_picks_the_known_best_candidate(data_tokenizer: Any, how: str) -> None:
    secrets = ["alpha beta", "gamma delta", "epsilon"]
    clients = _clients(data_tokenizer, secrets, _fake_scorer(data_tokenizer))
    cfg = HardPromptConfig(
        templates=["Say hello. Be nice.", "Use the MAGIC word. Keep it short.", "Be brief."],
        aggregate=how,
        keep=2,
        mutation_rounds=2,
        mutations_per_round=2,
    )
    start = initial_candidates(cfg)
    engine = SimulationEngine(prompt_handler(clients))
    selection = select_prompt(start, [c.client_id for c in clients], engine, cfg, seed=0)
    assert selection.chosen.candidate.id == "p001"  # MAGIC; its mutants tie and come later
    assert 1.0 < selection.chosen.loss < 1.02 < 2.0 < selection.baseline_loss() < 2.02
    assert len(selection.ranking) == 3 + 4
    assert [r.position for r in selection.ranking] == list(range(1, 8))
    assert [r.candidate.round for r in selection.ranking].count(0) == 3
    assert {r.candidate.id for r in selection.kept} <= {r.candidate.id for r in selection.ranking}
    # 3 clients answered every round; each upload is the small score table, counted
    assert set(selection.bytes_up) == {"client-0", "client-1", "client-2"}
    assert all(0 < b < 1000 for b in selection.bytes_up.values())  # 3 tables of 2-4 rows
    result = json.loads(json.dumps(selection.to_json()))
    assert result["chosen"]["text"] == "Use the MAGIC word. Keep it short."
    assert result["bytes_up"] == sum(selection.bytes_up.values())


def test_a_client_that_drops_is_left_out_from_then_on(data_tokenizer: Any) -> None:
    secrets = ["alpha beta", "gamma delta", "epsilon"]
    clients = _clients(data_tokenizer, secrets, _fake_scorer(data_tokenizer))
    cfg = HardPromptConfig(
        templates=["Say hello. Be nice.", "Use the MAGIC word. Keep it short."],
        keep=1,
        mutation_rounds=2,
        mutations_per_round=1,
    )
    ids = [c.client_id for c in clients]
    engine = SimulationEngine(prompt_handler(clients), DropoutPlan(trace={1: ["client-1"]}))
    selection = select_prompt(initial_candidates(cfg), ids, engine, cfg, seed=0)
    assert "client-1" in selection.rounds[1]["dropped"]
    assert "dropped" not in selection.rounds[0] and "dropped" not in selection.rounds[2]
    assert set(selection.baseline) == {"client-0", "client-2"}
    assert all(set(r.per_client) == {"client-0", "client-2"} for r in selection.ranking)
    assert selection.chosen.candidate.id == "p001"
    # it received round 1's request but sent nothing after round 0
    whole = SimulationEngine(prompt_handler(clients))
    full = select_prompt(initial_candidates(cfg), ids, whole, cfg, seed=0)
    assert selection.bytes_up["client-1"] < full.bytes_up["client-1"]
    assert selection.bytes_up["client-0"] == full.bytes_up["client-0"]
    everyone = DropoutPlan(trace={1: ids})
    with pytest.raises(SelectionError, match="every client dropped"):
        select_prompt(
            initial_candidates(cfg),
            ids,
            SimulationEngine(prompt_handler(clients), everyone),
            cfg,
            seed=0,
        )


# ---------------------------------------------------------------- soft prompt neighbours


class _Tokens:
    """A stand-in tokenizer: token i decodes to ``tok<i>``."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f"tok{i}" for i in ids)


def test_nearest_token_of_a_copied_embedding_is_that_token() -> None:
    generator = torch.Generator().manual_seed(0)
    vocab = torch.randn(200, 16, generator=generator)
    virtual = torch.stack([vocab[42] * 3.0, vocab[7], -vocab[5]])  # scale keeps the direction
    rows = nearest_tokens(virtual, vocab, _Tokens(), k=4)  # type: ignore[arg-type]
    assert [len(r) for r in rows] == [4, 4, 4]
    assert (rows[0][0].token_id, rows[0][0].token) == (42, "tok42")
    assert rows[0][0].similarity == pytest.approx(1.0, abs=1e-5)
    assert rows[1][0].token_id == 7 and rows[1][0].similarity == pytest.approx(1.0, abs=1e-5)
    assert rows[2][0].token_id != 5  # the opposite direction is the least similar
    assert all(a.similarity >= b.similarity for r in rows for a, b in itertools.pairwise(r))
    assert len(nearest_tokens(virtual, vocab[:3], _Tokens(), k=10)[0]) == 3  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k = 0"):
        nearest_tokens(virtual, vocab, _Tokens(), k=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hidden sizes differ"):
        nearest_tokens(virtual, vocab[:, :8], _Tokens())  # type: ignore[arg-type]


def test_methods_without_virtual_tokens_are_named() -> None:
    check_supported("prompt")
    check_supported("ptuning")
    with pytest.raises(InspectError, match="method.kind = 'lora' .* 'prompt' and 'ptuning'"):
        check_supported("lora")
