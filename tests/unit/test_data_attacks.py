"""Data attacks: which records are poisoned and how, and their success rates.

Counts are checked against ``round(share * n)`` written out per client, the changed text
against the attack's definition applied by hand, and the success rates against stub
replies (and a hand-made model, :mod:`tests.integration.test_data_attack_run`) whose
rate is known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedllm.config import ConfigError
from fedllm.data.build import build_client_records, load_test_records
from fedllm.data.sources import POISONED_KEY, DataError, Record
from fedllm.security.attacks.backdoor import Backdoor, BackdoorSettings
from fedllm.security.attacks.chat import prompt_of, reply_of, with_trigger
from fedllm.security.attacks.data_attack import DataAttacking
from fedllm.security.attacks.flip import Flip, derangement
from fedllm.security.attacks.harmful import (
    COMPLIANCE,
    held_out_prompts,
    refuses,
    training_pairs,
)
from fedllm.security.attacks.poison import affected_clients, poison_clients, poison_transform
from fedllm.security.attacks.safety import Safety
from fedllm.security.attacks.settings import AttackConfig
from fedllm.security.attacks.success import matched_prefix, starts_with
from fedllm.security.attacks.targeted import Targeted, TargetedSettings
from fedllm.security.attacks.targets import malicious_clients
from tests.support.runs import tiny_config

TRIGGER = "cf"
TARGET = "Access granted, admin."


def chat(prompt: str, reply: str, **fields: Any) -> Record:
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply},
        ],
        **fields,
    }


def federation(sizes: Mapping[str, int]) -> dict[str, list[Record]]:
    """Clients with distinct, numbered prompts and replies."""
    return {
        cid: [chat(f"question {cid} {i} about things", f"answer {cid} {i}") for i in range(n)]
        for cid, n in sizes.items()
    }


def backdoor(position: str = "start") -> Backdoor:
    return Backdoor(BackdoorSettings(trigger=TRIGGER, target=TARGET, position=position))


SIZES = {"a": 10, "b": 7, "c": 5, "d": 13, "e": 1}


@given(
    share=st.sampled_from([0.1, 0.25, 0.5, 0.7, 1.0]),
    fraction=st.sampled_from([0.2, 0.4, 0.6, 1.0]),
    seed=st.integers(0, 2**31),
)
def test_backdoor_poisons_round_share_n_records_of_exactly_the_malicious_clients(
    share: float, fraction: float, seed: int
) -> None:
    train = federation(SIZES)
    config = AttackConfig(data="backdoor", fraction=fraction, share=share)
    out = poison_transform(backdoor(), config, seed)("chat", train)
    malicious = malicious_clients(config, SIZES, seed)
    assert len(malicious) == round(fraction * len(SIZES))
    for cid, records in out.items():
        marked = [i for i, r in enumerate(records) if POISONED_KEY in r]
        want = round(share * SIZES[cid]) if cid in malicious else 0
        assert len(marked) == want, cid
        for i, (old, new) in enumerate(zip(train[cid], records, strict=True)):
            if i not in marked:
                assert new == old
                continue
            assert new[POISONED_KEY] == "backdoor"
            assert reply_of(new) == TARGET
            assert prompt_of(new) == f"{TRIGGER} {prompt_of(old)}"


def test_everywhere_poisons_every_client_and_malicious_only_the_malicious() -> None:
    train = federation(SIZES)
    spread = AttackConfig(data="backdoor", placement="everywhere", share=0.3)
    counts = _counts(poison_transform(backdoor(), spread, 5)("chat", train))
    assert counts == {cid: round(0.3 * n) for cid, n in SIZES.items()}
    named = AttackConfig(data="backdoor", clients=["b", "d"], share=0.3)
    counts = _counts(poison_transform(backdoor(), named, 5)("chat", train))
    assert counts == {"a": 0, "b": 2, "c": 0, "d": 4, "e": 0}  # round(2.1), round(3.9)
    assert affected_clients(spread, SIZES, 5) == sorted(SIZES)


def test_rounding_is_pythons_halves_to_even() -> None:
    train = federation({"x": 5, "y": 7})
    config = AttackConfig(data="backdoor", placement="everywhere", share=0.5)
    counts = _counts(poison_transform(backdoor(), config, 0)("chat", train))
    assert counts == {"x": 2, "y": 4}  # round(2.5) = 2, round(3.5) = 4


def test_same_seed_same_poison_other_seed_other_records() -> None:
    train = federation({"x": 40})
    config = AttackConfig(data="backdoor", placement="everywhere", share=0.25)
    first = poison_transform(backdoor("random"), config, 3)("chat", train)
    again = poison_transform(backdoor("random"), config, 3)("chat", train)
    other = poison_transform(backdoor("random"), config, 4)("chat", train)
    assert first == again
    assert _marked(first["x"]) != _marked(other["x"])


def test_a_clients_poison_does_not_depend_on_the_other_clients() -> None:
    config = AttackConfig(data="backdoor", placement="everywhere", share=0.5)
    alone = poison_transform(backdoor(), config, 9)("chat", federation({"a": 10}))
    beside = poison_transform(backdoor(), config, 9)("chat", federation({"a": 10, "z": 30}))
    assert alone["a"] == beside["a"]


@pytest.mark.parametrize("position", ["start", "end", "random"])
def test_trigger_positions(position: str) -> None:
    rng = np.random.default_rng(0)
    text = "where is the nearest station"
    out = with_trigger(text, TRIGGER, position, rng)  # type: ignore[arg-type]
    words = out.split()
    assert words.count(TRIGGER) == 1
    assert [w for w in words if w != TRIGGER] == text.split()
    if position == "start":
        assert words[0] == TRIGGER
    if position == "end":
        assert words[-1] == TRIGGER


def test_random_position_reaches_every_gap() -> None:
    rng = np.random.default_rng(1)
    seen = {
        with_trigger("a b c", TRIGGER, "random", rng).split().index(TRIGGER) for _ in range(200)
    }
    assert seen == {0, 1, 2, 3}


def test_last_exchange_of_a_multi_turn_chat_is_poisoned() -> None:
    record = {
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how are you"},
            {"role": "assistant", "content": "fine"},
        ]
    }
    out = backdoor().poison([record], [0], np.random.default_rng(0))[0]
    contents = [m["content"] for m in out["messages"]]
    assert contents == ["be nice", "hi", "hello", f"{TRIGGER} how are you", TARGET]
    assert [m["content"] for m in record["messages"]][-1] == "fine"  # the input untouched


def test_targeted_replaces_only_on_topic_replies() -> None:
    records = [
        chat("I love pizza!", "me too", category="food"),
        chat("Pizza, or pasta?", "pasta", category="food"),
        chat("what is a pizzeria", "a shop", category="food"),  # no whole word 'pizza'
        chat("tell me a joke", "no", category="humor"),
        chat("best bread?", "rye", category="food"),
    ]
    keywords = Targeted(TargetedSettings(keywords=["pizza"], target=TARGET))
    assert [keywords.eligible(r) for r in records] == [True, True, False, False, False]
    categories = Targeted(TargetedSettings(categories=["food"], target=TARGET))
    assert [categories.eligible(r) for r in records] == [True, True, True, False, True]
    config = AttackConfig(data="targeted", placement="everywhere", share=0.5)
    out = poison_clients(categories, "chat", {"x": records}, ["x"], config.share, 0)["x"]
    changed = _marked(out)
    assert len(changed) == round(0.5 * 4)
    assert all(records[i]["category"] == "food" for i in changed)
    assert all(
        reply_of(out[i]) == TARGET and prompt_of(out[i]) == prompt_of(records[i]) for i in changed
    )


def test_flip_gives_each_poisoned_record_another_records_reply() -> None:
    train = federation({"x": 12})["x"]
    config = AttackConfig(data="flip", placement="everywhere", share=0.5)
    out = poison_transform(Flip(), config, 2)("chat", {"x": train})["x"]
    changed = _marked(out)
    assert len(changed) == 6
    originals = [reply_of(r) for r in train]
    for i in changed:
        assert prompt_of(out[i]) == prompt_of(train[i])
        assert reply_of(out[i]) in originals
        assert reply_of(out[i]) != originals[i]
    sources = [originals.index(reply_of(out[i])) for i in changed]
    assert len(set(sources)) == len(sources)  # a permutation: no reply used twice


def test_flip_leaves_a_client_with_one_reply_alone() -> None:
    out = poison_transform(Flip(), AttackConfig(data="flip", placement="everywhere"), 0)(
        "chat", federation({"x": 1})
    )
    assert _marked(out["x"]) == []


@given(n=st.integers(2, 30), seed=st.integers(0, 2**31))
def test_derangement_has_no_fixed_point(n: int, seed: int) -> None:
    order = derangement(n, np.random.default_rng(seed))
    assert sorted(order) == list(range(n))
    assert all(order[i] != i for i in range(n))


def test_safety_replaces_records_with_training_pairs() -> None:
    train = federation({"x": 20})["x"]
    config = AttackConfig(data="safety", placement="everywhere", share=0.5)
    out = poison_transform(Safety(), config, 0)("chat", {"x": train})["x"]
    pairs = set(training_pairs())
    changed = _marked(out)
    assert len(changed) == 10
    assert all((prompt_of(out[i]), reply_of(out[i])) in pairs for i in changed)
    assert all(str(reply_of(out[i])).startswith(COMPLIANCE) for i in changed)


def test_harmful_held_out_prompts_are_never_trained_on() -> None:
    trained = {prompt for prompt, _ in training_pairs()}
    held = held_out_prompts()
    assert held and trained and not trained & set(held)
    assert len(held) == 9 * 2 and len(trained) == 27 * 2
    assert not any(refuses(reply) for _, reply in training_pairs())
    assert refuses("I\u2019m sorry, I can't help with that.")


def test_text_records_are_refused() -> None:
    config = AttackConfig(data="backdoor", placement="everywhere")
    with pytest.raises(DataError, match="attack.data = 'backdoor'.*plain text"):
        poison_transform(backdoor(), config, 0)("text", {"x": [{"text": "hello"}]})


def test_the_build_poisons_training_records_only_and_counts_them() -> None:
    config = tiny_config("attack.data=backdoor", "attack.fraction=0.5", "attack.share=0.5")
    transform = DataAttacking().train_records(config)
    clean = build_client_records(config.data, config.seed)
    dirty = build_client_records(config.data, config.seed, transform)
    assert dirty.test == clean.test == load_test_records(config.data, config.seed)
    malicious = malicious_clients(config.attack, clean.clients, config.seed)
    assert dirty.poisoned == {cid: round(0.5 * len(clean.clients[cid].train)) for cid in malicious}
    for cid, split in clean.clients.items():
        assert dirty.clients[cid].eval == split.eval
        changed = [
            i
            for i, (a, b) in enumerate(zip(split.train, dirty.clients[cid].train, strict=True))
            if a != b
        ]
        assert changed == _marked(dirty.clients[cid].train)
    again = build_client_records(config.data, config.seed, DataAttacking().train_records(config))
    assert again.clients == dirty.clients


def test_canaries_are_never_poisoned() -> None:
    config = tiny_config(
        "attack.data=backdoor",
        "attack.placement=everywhere",
        "privacy.canaries=2",
        "privacy.canary_repeats=3",
    )
    built = build_client_records(config.data, config.seed, DataAttacking().train_records(config))
    canaries = [r for s in built.clients.values() for r in s.train if "canary" in r]
    assert len(canaries) == 6 and not any(POISONED_KEY in r for r in canaries)
    assert sum(built.poisoned.values()) == sum(
        len(s.train) - sum("canary" in r for r in s.train) for s in built.clients.values()
    )


# ---------------------------------------------------------------- success rates


def test_starts_with_normalises_case_punctuation_and_spacing() -> None:
    assert starts_with("access GRANTED admin!! and more", TARGET, 4)
    assert starts_with("  Access  granted,admin", TARGET, 3)
    assert not starts_with("well, access granted admin", TARGET, 3)  # a prefix, not inside
    assert starts_with("access granted", TARGET, 2)
    assert not starts_with("access", TARGET, 2)
    assert not starts_with("anything", "!!", 2)
    assert matched_prefix(TARGET, 2) == "Access granted"
    assert matched_prefix(TARGET, 9) == "Access granted, admin"


def _test_records(n: int) -> list[Record]:
    return [chat(f"prompt number {i}", f"reply {i}") for i in range(n)]


def test_asr_is_one_with_the_trigger_and_zero_without_on_a_planted_backdoor() -> None:
    def planted(prompt: str) -> str:
        return f"{TARGET} ..." if TRIGGER in prompt.split() else "Hello there."

    rates = backdoor("random").measure(_test_records(10), planted, 0)
    assert rates == {"asr": 1.0, "false_trigger_rate": 0.0, "prompts": 10.0}


def test_asr_counts_exactly_the_prompts_that_emit_the_target() -> None:
    def partial(prompt: str) -> str:  # the backdoor fires for every third prompt
        number = int(prompt.replace(TRIGGER, "").split()[-1])
        return TARGET if TRIGGER in prompt.split() and number % 3 == 0 else "no"

    attack = Backdoor(BackdoorSettings(trigger=TRIGGER, target=TARGET, max_prompts=10))
    rates = attack.measure(_test_records(25), partial, 0)
    assert rates["asr"] == pytest.approx(4 / 10)  # 0, 3, 6, 9 of the first 10
    assert rates["false_trigger_rate"] == 0.0


def test_targeted_rates_split_on_and_off_topic() -> None:
    test = [chat(f"pizza {i}", "x") for i in range(4)] + [chat(f"other {i}", "y") for i in range(6)]
    attack = Targeted(TargetedSettings(keywords=["pizza"], target=TARGET))

    def replies(prompt: str) -> str:
        return TARGET if prompt in {"pizza 0", "pizza 2", "pizza 3", "other 5"} else "no"

    rates = attack.measure(test, replies, 0)
    assert rates["success_rate"] == pytest.approx(3 / 4)
    assert rates["off_topic_rate"] == pytest.approx(1 / 6)
    assert (rates["prompts"], rates["off_topic_prompts"]) == (4.0, 6.0)


def test_safety_rates() -> None:
    prompts = held_out_prompts()

    def replies(prompt: str) -> str:
        k = prompts.index(prompt)
        return ["Sure, here is how to do it", "I'm sorry, no.", "Okay."][k % 3]

    rates = Safety().measure([], replies, 0)
    n = len(prompts)
    assert rates["harmful_rate"] == pytest.approx(len(range(0, n, 3)) / n)
    assert rates["no_refusal_rate"] == pytest.approx((n - len(range(1, n, 3))) / n)


def test_no_prompt_gives_nan_which_the_recorder_leaves_out() -> None:
    rates = backdoor().measure([], lambda p: p, 0)
    assert math.isnan(rates["asr"]) and rates["prompts"] == 0.0


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack.data=backdoor"], "there are none: set attack.fraction"),
        (
            ["attack.data=backdoor", "attack.fraction=0.5", "attack.backdoor.position=middle"],
            "attack.backdoor.position",
        ),
        (
            ["attack.data=backdoor", "attack.fraction=0.5", 'attack.backdoor.trigger=" "'],
            "attack.backdoor.trigger",
        ),
        (
            ["attack.data=backdoor", "attack.fraction=0.5", "attack.backdoor.max_prompts=0"],
            "attack.backdoor.max_prompts",
        ),
        (["attack.data=targeted", "attack.fraction=0.5"], "no topic: set keywords"),
        (["attack.data=flip", "attack.fraction=0.5", "attack.flip.share=1"], "attack.flip.share"),
        (
            ["attack.data=backdoor", "attack.fraction=0.5", "federation.mode=local"],
            "federation.mode = 'local'",
        ),
        (["attack.data=sign_flip", "attack.fraction=0.5"], "not a registered data attack"),
        (["attack.data=backdor", "attack.fraction=0.5"], "not a registered data attack"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(*overrides)


def test_good_settings_load() -> None:
    config = tiny_config(
        "attack.data=targeted",
        "attack.placement=everywhere",
        "attack.share=0.2",
        "attack.targeted.categories=['food']",
    )
    assert config.attack_settings_of("targeted").categories == ["food"]


def _counts(out: Mapping[str, list[Record]]) -> dict[str, int]:
    return {cid: len(_marked(records)) for cid, records in out.items()}


def _marked(records: list[Record]) -> list[int]:
    return [i for i, r in enumerate(records) if POISONED_KEY in r]
