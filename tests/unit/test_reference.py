"""docs/config.md, the config reference, is the schema's."""

from pathlib import Path

import pytest

from fedllm.config import Config
from fedllm.reference import PAGE, config_reference, main, render_page

ROOT = Path(__file__).resolve().parents[2]


def test_config_page_is_in_sync_with_the_schema() -> None:
    page = ROOT / PAGE
    assert page.exists(), f"{PAGE} is missing: run `python -m fedllm.reference`"
    assert page.read_text() == render_page(), f"run `python -m fedllm.reference` to update {PAGE}"


def test_reference_lists_every_key() -> None:
    reference = config_reference()
    for section, field in Config.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        if sub is None:
            assert f"`{section}`" in reference
            continue
        assert f"**[{section}]**" in reference
        for key in sub:
            assert f"| `{key}` |" in reference, f"{section}.{key}"


def test_page_holds_the_reference() -> None:
    assert config_reference() in render_page()


def test_check_fails_on_drift_and_write_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "docs" / "config.md"
    assert main([str(page), "--check"]) == 1, "a missing page is out of date"
    assert main([str(page)]) == 0
    assert page.read_text() == render_page()
    assert main([str(page), "--check"]) == 0
    page.write_text(page.read_text().replace("| `rounds` | `3` |", "| `rounds` | `4` |"))
    assert main([str(page), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
