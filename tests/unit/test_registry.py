"""Registries: declared built-in names are known before their module is imported."""

from __future__ import annotations

import sys
import types

import pytest

from fedllm import components
from fedllm.registry import Registry, UnknownComponentError


def _fake_module(name: str, register: Registry[object], entry: str) -> None:
    module = types.ModuleType(name)

    def factory() -> str:
        return "made"

    factory.__module__ = name
    module.factory = register.register(entry)(factory)  # type: ignore[attr-defined]
    sys.modules[name] = module


def test_declared_names_are_known_without_import_and_resolved_on_first_get(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry: Registry[object] = Registry("widget", {"gear": "fake_widgets"})
    assert "gear" in registry and registry.names() == ["gear"]
    imported: list[str] = []

    def fake_import(name: str) -> object:
        imported.append(name)
        _fake_module(name, registry, "gear")
        return sys.modules[name]

    monkeypatch.setattr("fedllm.registry.importlib.import_module", fake_import)
    monkeypatch.delitem(sys.modules, "fake_widgets", raising=False)
    assert callable(registry.get("gear")) and imported == ["fake_widgets"]
    registry.get("gear")
    assert imported == ["fake_widgets"]  # imported once


def test_a_declared_name_cannot_be_taken_by_another_module() -> None:
    registry: Registry[object] = Registry("widget", {"gear": "fake_widgets"})

    def impostor() -> None: ...

    with pytest.raises(ValueError, match="widget 'gear' is registered twice"):
        registry.register("gear")(impostor)
    registry.register("sprocket")(impostor)  # a new name is fine
    assert registry.names() == ["gear", "sprocket"]


def test_a_home_that_does_not_register_its_name_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry: Registry[object] = Registry("widget", {"gear": "fake_widgets"})
    monkeypatch.setattr("fedllm.registry.importlib.import_module", lambda name: None)
    with pytest.raises(RuntimeError, match="fake_widgets is declared as the home of widget"):
        registry.get("gear")


def test_unknown_names_list_the_declared_ones() -> None:
    registry: Registry[object] = Registry("widget", {"gear": "fake_widgets"})
    with pytest.raises(
        UnknownComponentError,
        match="'gears' is not a known widget; choose one of gear \\(did you mean 'gear'\\?\\)",
    ):
        registry.get("gears")


@pytest.mark.parametrize("registry", components.REGISTRIES, ids=lambda r: r.kind)
def test_each_builtin_module_registers_exactly_the_names_declared_for_it(
    registry: Registry[object],
) -> None:
    components.load_builtin()
    for name, home in registry.homes.items():
        assert getattr(registry.get(name), "__module__", None) == home, name
    builtin = {n for n in registry.names() if registry.get(n).__module__.startswith("fedllm.")}
    assert builtin == set(registry.homes)  # nothing built in registers undeclared
