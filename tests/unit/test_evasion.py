"""Inference-time attacks: prompts split from held-out examples, PGD's budget and
ascent on the tiny model, and the suffix search on crafted cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedllm.data import IGNORE_INDEX, Example
from fedllm.federation.setup import Workspace, prepare
from fedllm.security.evasion.pgd import pgd
from fedllm.security.evasion.prompts import Prompt, chat_tail, split_prompt
from fedllm.security.evasion.suffix import Scored, SuffixAttack, greedy_suffix
from tests.support.runs import tiny_config


def test_a_chat_is_cut_at_its_reply_and_text_in_half() -> None:
    chat = Example([1, 2, 3, 4, 5, 6, 7], [-100, -100, -100, -100, 5, 6, 7])
    prompt = split_prompt(chat, tail=(3, 4))
    assert prompt == Prompt([1, 2, 3, 4], [5, 6, 7], [5, 6, 7], tail=2)
    assert prompt.example() == Example(chat.input_ids, [-100] * 4 + [5, 6, 7])
    text = Example([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6])
    assert split_prompt(text) == Prompt([1, 2, 3], [4, 5, 6], [4, 5, 6], tail=0)
    assert split_prompt(Example([1, 2], [-100, -100])) is None


@pytest.fixture(scope="module")
def ws() -> Workspace:
    return prepare(tiny_config("model.dtype=float32"), with_data=False)


def chats(ws: Workspace, n: int) -> list[Prompt]:
    tail = chat_tail(ws.tokenizer)
    assert ws.tokenizer.decode(tail) == "<|im_end|>\n<|im_start|>assistant\n"
    out = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"question number {i} about the weather" + " ok" * i},
            {"role": "assistant", "content": f"answer {i} is sunny"},
        ]
        prompt_ids = ws.tokenizer.apply_chat_template(
            messages[:1], add_generation_prompt=True, tokenize=True
        )["input_ids"]
        full = ws.tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
        labels = [IGNORE_INDEX] * len(prompt_ids) + list(full[len(prompt_ids) :])
        prompt = split_prompt(Example(list(full), labels), tail)
        assert prompt is not None and prompt.tail == len(tail)
        out.append(prompt)
    return out


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("scale", ["relative", "absolute"])
def test_pgd_respects_the_budget_touches_only_the_prompt_and_raises_the_loss(
    ws: Workspace, norm: str, scale: str
) -> None:
    prompts = chats(ws, 3)
    embeddings = ws.model.get_input_embeddings()
    eps = 0.2 if scale == "relative" else (0.5 if norm == "l2" else 0.01)
    found = pgd(ws.model, embeddings, prompts, eps, 5, ws.pad_id, norm, scale)  # type: ignore[arg-type]
    for row, prompt in enumerate(prompts):
        embeds = embeddings(torch.tensor(prompt.ids)).detach()
        if scale == "absolute":
            budget = eps
        elif norm == "l2":
            budget = eps * float(embeds.norm())
        else:
            budget = eps * float(embeds.pow(2).mean().sqrt())
        assert float(found.budgets[row]) == pytest.approx(budget, rel=1e-5)
        delta = found.delta[row]
        measured = float(delta.norm()) if norm == "l2" else float(delta.abs().max())
        assert measured <= budget * (1 + 1e-5)
        assert float(found.norms[row]) == pytest.approx(measured, rel=1e-5)
        assert float(delta[len(prompt.ids) :].abs().sum()) == 0  # the response is untouched
        # the loss reported is the loss of the response, transformers' own
        example = prompt.example()
        with torch.no_grad():
            clean = ws.model(
                input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])
            ).loss
        assert float(found.clean[row]) == pytest.approx(float(clean), rel=1e-5)
    assert bool((found.attacked > found.clean).all())
    zero = pgd(ws.model, embeddings, prompts, 0.0, 2, ws.pad_id, norm, scale)  # type: ignore[arg-type]
    torch.testing.assert_close(zero.attacked, zero.clean)


def test_a_larger_budget_raises_the_loss_more(ws: Workspace) -> None:
    prompts = chats(ws, 2)
    embeddings = ws.model.get_input_embeddings()
    small = pgd(ws.model, embeddings, prompts, 0.02, 8, ws.pad_id)
    large = pgd(ws.model, embeddings, prompts, 0.2, 8, ws.pad_id)
    assert bool((large.attacked - large.clean > small.attacked - small.clean).all())


@given(st.lists(st.integers(0, 15), min_size=1, max_size=5), st.integers(0, 1000))
def test_the_search_finds_a_known_suffix_on_a_crafted_score(known: list[int], seed: int) -> None:
    goal = torch.tensor(known)

    def score(suffixes: torch.Tensor) -> Scored:
        wrong = (suffixes != goal).sum(dim=1).float()
        return Scored(wrong, wrong == 0)

    losses: list[float] = []

    def every_token(current: torch.Tensor) -> torch.Tensor:
        losses.append(float(score(current[None]).loss[0]))
        return torch.arange(16).repeat(len(current), 1)

    start = torch.full((len(known),), 15)
    found = greedy_suffix(score, every_token, start, 60, 24, torch.Generator().manual_seed(seed))
    assert found.success and found.suffix == known and found.loss == 0
    assert losses == sorted(losses, reverse=True)  # never worse
    assert found.scored == 1 + 24 * found.steps


def greedy_reply(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


def test_the_search_succeeds_where_a_suffix_forces_the_greedy_reply(ws: Workspace) -> None:
    model = ws.model
    model.eval()
    prompt = chats(ws, 1)[0]
    head, tail = prompt.ids[: -prompt.tail], prompt.ids[-prompt.tail :]
    planted = 1234  # a one-token suffix whose greedy reply becomes the target
    target = greedy_reply(model, [*head, planted, *tail], 2)
    allowed = torch.zeros(model.get_input_embeddings().weight.shape[0], dtype=torch.bool)
    pool = [planted, *range(3000, 3015)]
    allowed[pool] = True
    attack = SuffixAttack(model, model.get_input_embeddings(), prompt, target, allowed)
    # the scores are transformers' loss on the target, and success is greedy decoding's
    suffixes = torch.tensor([[planted], [3001]])
    scored = attack.score(suffixes)
    for row, suffix in enumerate(suffixes.tolist()):
        ids = [*head, *suffix, *tail, *target]
        labels = [-100] * (len(ids) - len(target)) + target
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        assert float(scored.loss[row]) == pytest.approx(float(loss), rel=1e-5)
        reply = greedy_reply(model, [*head, *suffix, *tail], len(target))
        assert bool(scored.success[row]) == (reply == target)
    assert bool(scored.success[0])
    propose = attack.gradient_candidates(top_k=len(pool))
    assert sorted(propose(torch.tensor([3000]))[0].tolist()) == sorted(pool)
    found = greedy_suffix(
        attack.score, propose, torch.tensor([3000]), 10, 16, torch.Generator().manual_seed(0)
    )
    assert found.success
    assert greedy_reply(model, [*head, *found.suffix, *tail], len(target)) == target


def pgd_by_hand(
    model: torch.nn.Module, prompt: Prompt, eps: float, steps: int, norm: str
) -> tuple[torch.Tensor, float]:
    """Madry et al.'s PGD on one prompt's embeddings, written out: the final delta and
    the highest loss reached."""
    example = prompt.example()
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    x = model.get_input_embeddings()(ids).detach()
    n = len(prompt.ids)
    delta = torch.zeros_like(x)
    alpha = 2.5 * eps / steps
    best = float(model(inputs_embeds=x, labels=labels).loss.detach())
    for _ in range(steps):
        d = delta.clone().requires_grad_(True)
        perturbed = torch.cat([x[:, :n] + d[:, :n], x[:, n:]], dim=1)
        loss = model(inputs_embeds=perturbed, labels=labels).loss
        best = max(best, float(loss.detach()))
        (g,) = torch.autograd.grad(loss, d)
        if norm == "l2":
            delta = delta + alpha * g / g.norm()
            if delta.norm() > eps:
                delta = delta * (eps / delta.norm())
        else:
            delta = (delta + alpha * g.sign()).clamp(-eps, eps)
    with torch.no_grad():
        final = torch.cat([x[:, :n] + delta[:, :n], x[:, n:]], dim=1)
        best = max(best, float(model(inputs_embeds=final, labels=labels).loss))
    return delta[0], best


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.4), ("linf", 0.02)])
def test_pgd_is_madrys_pgd_written_out(ws: Workspace, norm: str, eps: float) -> None:
    prompt = chats(ws, 1)[0]
    delta, best = pgd_by_hand(ws.model, prompt, eps, 4, norm)
    found = pgd(
        ws.model, ws.model.get_input_embeddings(), [prompt], eps, 4, ws.pad_id, norm, "absolute"
    )  # type: ignore[arg-type]
    torch.testing.assert_close(found.delta[0], delta, rtol=1e-4, atol=1e-6)
    assert float(found.attacked[0]) == pytest.approx(best, rel=1e-5)


def test_the_search_never_moves_to_a_worse_suffix() -> None:
    goal = torch.tensor([3, 1, 4])

    def score(suffixes: torch.Tensor) -> Scored:  # the goal is best, but never a success
        wrong = (suffixes != goal).sum(dim=1).float()
        return Scored(wrong, torch.zeros(len(suffixes), dtype=torch.bool))

    def other_tokens(current: torch.Tensor) -> torch.Tensor:  # every proposal is worse
        return torch.stack([(current + shift) % 8 for shift in range(1, 8)], dim=1)

    found = greedy_suffix(score, other_tokens, goal, 5, 6, torch.Generator().manual_seed(0))
    assert found.suffix == goal.tolist() and found.loss == 0 and not found.success
    assert found.steps == 5


def test_the_attack_runs_on_a_bf16_base_as_the_run_trained_it() -> None:
    from fedllm.security.evasion.attack import AttackOptions, attack_model

    ws = prepare(tiny_config('model.dtype="bfloat16"', "client.bf16=true"), with_data=False)
    trainable = [n for n, p in ws.model.named_parameters() if p.requires_grad]
    test = [p.example() for p in chats(ws, 2)]
    options = AttackOptions(
        prompts=2, eps=(0.1,), pgd_steps=2, suffix_tokens=2, search_steps=1, candidates=2, top_k=4
    )
    report = attack_model(ws.model, ws.tokenizer, test, options, bf16=True)
    row = report["pgd"]["results"][0]
    assert row["attacked_loss"] >= row["clean_loss"] > 0
    assert all(p["norm"] <= p["budget"] * (1 + 1e-3) for p in row["per_prompt"])
    assert len(report["suffix"]["per_prompt"]) == 2
    assert [n for n, p in ws.model.named_parameters() if p.requires_grad] == trainable
