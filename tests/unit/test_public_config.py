"""[public]: defaults, and combinations refused with the key, the value and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomllib

from fedllm.config import ConfigError, dump_config, parse_config


def config(**public: Any) -> dict[str, Any]:
    return {"data": {"source": "chatterbot"}, "public": public}


def test_no_public_data_by_default() -> None:
    cfg = parse_config({})
    assert cfg.public.source is None
    assert (cfg.public.warmup_steps, cfg.public.server_steps, cfg.public.mix_ratio) == (0, 0, 0.0)


def test_a_full_public_section_round_trips() -> None:
    raw = config(source="pydoc", warmup_steps=5, server_steps=2, server_weight=0.3, mix_ratio=0.25)
    cfg = parse_config(raw)
    assert cfg.public.public_per_batch(cfg.client.batch_size) == 1  # round(0.25 x 4)
    assert parse_config(tomllib.loads(dump_config(cfg))) == cfg


@pytest.mark.parametrize(
    ("public", "expected"),
    [
        ({"warmup_steps": 3}, r"public\.warmup_steps = 3 needs a public corpus"),
        ({"server_steps": 1}, r"public\.server_steps = 1 needs a public corpus.*public\.source"),
        ({"mix_ratio": 0.5}, r"public\.mix_ratio = 0\.5 needs a public corpus"),
        ({"source": "pydoc", "server_weight": 0.5}, r"server_weight = 0\.5.*server_steps = 0"),
        ({"source": "pydoc", "server_steps": 1, "server_weight": 1.0}, r"server_weight = 1\.0"),
        ({"source": "pydoc", "server_steps": 1, "server_weight": 0.0}, r"server_weight = 0\.0"),
        ({"source": "pydoc", "mix_ratio": 1.0}, r"public\.mix_ratio = 1\.0"),
        ({"source": "chatterbot"}, r"public\.source = 'chatterbot' is also data\.source"),
        ({"source": "pydocs"}, r"public\.source = .*pydocs.*pydoc"),
    ],
)
def test_bad_public_settings_are_named(public: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_config(config(**public))


def test_the_same_file_as_private_and_public_is_refused(tmp_path: Path) -> None:
    raw = {"data": {"source": str(tmp_path / "a.txt")}, "public": {"source": "./x/../a.txt"}}
    parse_config(raw)  # different files: fine
    raw["public"]["source"] = str(tmp_path / "sub" / ".." / "a.txt")
    with pytest.raises(ConfigError, match="would share text"):
        parse_config(raw)


@pytest.mark.parametrize(
    ("mix_ratio", "batch_size", "n_public"), [(0.1, 4, 0), (0.9, 4, 4), (0.2, 2, 0)]
)
def test_a_mix_that_rounds_to_none_or_all_is_refused(
    mix_ratio: float, batch_size: int, n_public: int
) -> None:
    raw = config(source="pydoc", mix_ratio=mix_ratio)
    raw["client"] = {"batch_size": batch_size}
    with pytest.raises(ConfigError, match=f"rounds to {n_public} public example"):
        parse_config(raw)


@pytest.mark.parametrize(
    ("section", "setting", "expected"),
    [
        ("federation", {"mode": "local"}, "federation.mode = 'local'"),
        ("personal", {"keys": ["*lora_B*"]}, "personal.keys"),
        ("personal", {"prompt_tokens": 2}, "personal.prompt_tokens = 2"),
    ],
)
def test_server_training_needs_a_global_model_it_can_train(
    section: str, setting: dict[str, Any], expected: str
) -> None:
    for public in ({"warmup_steps": 2}, {"server_steps": 2}):
        raw = config(source="pydoc", **public)
        raw[section] = setting
        with pytest.raises(ConfigError, match="cannot be combined with") as err:
            parse_config(raw)
        assert expected in str(err.value)
    raw = config(source="pydoc", mix_ratio=0.5)  # mixing is a client matter: fine
    raw[section] = setting
    parse_config(raw)


def test_server_steps_refuse_fednova_but_warm_up_does_not() -> None:
    raw = config(source="pydoc", server_steps=2)
    raw["server"] = {"normalize": "fednova"}
    raw["client"] = {"optimizer": "sgd"}
    with pytest.raises(ConfigError, match="server_steps = 2 cannot be combined with.*fednova"):
        parse_config(raw)
    raw = config(source="pydoc", warmup_steps=2)
    raw["server"] = {"normalize": "fednova"}
    raw["client"] = {"optimizer": "sgd"}
    parse_config(raw)
