"""Config loading: overrides, and errors that name the key and what is valid."""

from pathlib import Path

import pytest

from fedllm.config import ConfigError, apply_override, dump_config, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_every_shipped_recipe_loads() -> None:
    recipes = sorted((ROOT / "configs").glob("*.toml"))
    assert recipes, "configs/ must ship recipes"
    for recipe in recipes:
        load_config(recipe)


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "[server]\nrounds = 2\n"),
        [
            "server.rounds=7",
            "data.source=chatterbot",
            "client.bf16=true",
            "method.target_modules=['q_proj']",
        ],
    )
    assert cfg.server.rounds == 7
    assert cfg.data.source == "chatterbot"
    assert cfg.client.bf16 is True
    assert cfg.method.target_modules == ["q_proj"]


def test_misspelled_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[server]\nrouns = 2\n"))
    message = str(err.value)
    assert "server.rouns is not a known key" in message
    assert "did you mean 'rounds'" in message


def test_misspelled_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sever is not a known key.*did you mean 'server'"):
        load_config(write(tmp_path, "[sever]\nrounds = 2\n"))


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.rounds = 'many'"):
        load_config(write(tmp_path, '[server]\nrounds = "many"\n'))


def test_out_of_range_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"client\.lr = -1"):
        parse_config({"client": {"lr": -1}})


def test_unknown_component_lists_choices() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"optimizer": "fedadm"}})
    message = str(err.value)
    assert "server.optimizer = 'fedadm' is not a known server optimizer" in message
    assert "fedavg" in message


def test_unknown_method_and_source_are_refused() -> None:
    with pytest.raises(ConfigError, match="method.kind = 'lorra'.*did you mean 'lora'"):
        parse_config({"method": {"kind": "lorra"}})
    with pytest.raises(ConfigError, match="data.source = 'chitchatt'"):
        parse_config({"data": {"source": "chitchatt"}})


def test_data_file_paths_pass_the_source_check() -> None:
    assert parse_config({"data": {"source": "my/data.jsonl"}}).data.source == "my/data.jsonl"


def test_inconsistent_min_clients_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_clients = 3 exceeds.*clients_per_round = 2"):
        parse_config({"server": {"min_clients": 3, "clients_per_round": 2}})


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = parse_config({"server": {"rounds": 9}, "client": {"max_grad_norm": None}})
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_override({}, "server.rounds")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "nope.toml")


def test_none_word_unsets_optional_fields_only() -> None:
    cfg = load_config(ROOT / "configs" / "tiny.toml", ["client.max_grad_norm=none"])
    assert cfg.client.max_grad_norm is None
    assert parse_config({"model": {"name": "none"}}).model.name == "none"
