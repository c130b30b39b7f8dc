"""Config loading: overrides, and errors that name the key and what is valid."""

from pathlib import Path
from typing import Any, get_args

import pytest
import tomllib
from pydantic import BaseModel

from fedllm.config import (
    Config,
    ConfigError,
    apply_override,
    dump_config,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "dropout_trace" and key != "local_steps_by_client":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


RECIPES = sorted((ROOT / "configs").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_resolves_to_what_it_says(recipe: Path) -> None:
    written = flatten(tomllib.loads(recipe.read_text()))
    resolved = flatten(load_config(recipe).model_dump())
    assert written, f"{recipe.name} sets nothing"
    for key, value in written.items():
        assert key in resolved, f"{recipe.name}: {key} is not a config key"
        assert resolved[key] == (None if value == "none" else value), f"{recipe.name}: {key}"
    defaults = flatten(parse_config({}).model_dump())
    unset = set(resolved) - set(written)
    assert {k: resolved[k] for k in unset} == {k: defaults[k] for k in unset}


def test_recipes_cover_the_documented_capabilities() -> None:
    by_name = {p.stem: load_config(p) for p in RECIPES}
    demo = by_name["demo"]
    assert (demo.model.name, demo.method.kind, demo.data.source) == (
        "smollm2-135m",
        "lora",
        "chitchat",
    )
    assert (demo.server.rounds, demo.server.clients_per_round, demo.data.num_clients) == (5, 2, 4)
    assert by_name["tiny"].model.name == "tiny"
    kinds = {c.method.kind for c in by_name.values()}
    assert {"full", "lora", "prompt", "prefix", "ptuning", "ia3", "adapter"} <= kinds


def float_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every float-valued key of the schema."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += float_fields(annotation, f"{prefix}{name}.")
        elif annotation is float or float in get_args(annotation):
            found.append(f"{prefix}{name}")
    return found


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_no_float_key_accepts_a_non_finite_number(value: str) -> None:
    keys = float_fields(Config)
    assert len(keys) > 15 and "client.lr" in keys
    for dotted in keys:
        raw: dict[str, Any] = {}
        apply_override(raw, f"{dotted}={value}")
        with pytest.raises(ConfigError, match="finite number"):
            parse_config(raw)


def test_a_key_under_the_wrong_section_names_where_it_belongs() -> None:
    with pytest.raises(
        ConfigError, match=r"'seed' is a key of the top level \(--set seed=\.\.\.\)"
    ):
        parse_config({"run": {"seed": 1}})
    with pytest.raises(ConfigError, match=r"'prox_mu' is a key of \[client\] \(--set client\."):
        parse_config({"run": {"prox_mu": 1}})
    with pytest.raises(
        ConfigError,
        match=r"'lr' is a key of \[client\], \[server\] and \[attack\] "
        r"\(--set client\.lr=\.\.\. or --set server\.lr=\.\.\. or --set attack\.lr=\.\.\.\)",
    ):
        parse_config({"run": {"lr": 1}})


def test_an_unreadable_data_file_kind_says_which_files_are_read() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"data": {"source": "mine/data.csv"}})
    message = str(err.value)
    assert ".jsonl or .txt" in message and "chitchat" in message and ".csv files" in message


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
