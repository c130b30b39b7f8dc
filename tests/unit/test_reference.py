"""The README's config reference is the schema's."""

from pathlib import Path

from fedllm.config import Config
from fedllm.reference import config_reference, render_readme

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_is_in_sync_with_the_schema() -> None:
    text = README.read_text()
    assert render_readme(text) == text, "run `python -m fedllm.reference` to update README.md"


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
