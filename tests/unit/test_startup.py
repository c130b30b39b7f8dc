"""Start-up: the command line and the config schema load without the heavy stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))

HEAVY = ("torch", "transformers", "peft", "datasets", "flwr_datasets", "matplotlib")


@pytest.mark.parametrize(
    "statement",
    [
        "import fedllm.cli; fedllm.cli.build_parser().format_help()",
        "import fedllm.data.settings, fedllm.model.settings, fedllm.pipeline.settings",
        "import fedllm",
    ],
)
def test_light_entry_points_import_no_heavy_package(statement: str) -> None:
    probe = f"import sys; {statement}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "", f"{statement!r} imported {loaded}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_fedllm_config_checks_every_shipped_recipe_without_the_heavy_stack(config: Path) -> None:
    # validation checks every component name and the algorithms' composition
    probe = (
        "import sys; from fedllm.cli import main; main(['config', sys.argv[1]]); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(config)], capture_output=True, text=True, check=True
    )
    assert "[model]" in done.stdout
    assert done.stderr.strip() == "", f"fedllm config {config.name} imported {done.stderr}"


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        ('[method]\nkind = "lorra"\n', "(did you mean 'lora'?)"),
        (
            '[method]\nrank_min = 2\n[client]\ndrift_correction = "scaffold"\n',
            "cannot be combined with client.drift_correction = 'scaffold'",
        ),
    ],
    ids=["unknown-name", "composition"],
)
def test_config_errors_are_found_without_the_heavy_stack(
    tmp_path: Path, toml: str, error: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(toml)
    probe = (
        "import sys; from fedllm.config import load_config, ConfigError\n"
        "try:\n    load_config(sys.argv[1])\nexcept ConfigError as e:\n    print(e)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(bad)], capture_output=True, text=True, check=True
    )
    assert error in done.stdout
    assert done.stderr.strip() == "", f"a config error imported {done.stderr}"


def test_lazy_exports_resolve_and_refuse_unknown_names() -> None:
    import fedllm.data
    import fedllm.model
    import fedllm.pipeline
    from fedllm.data.build import FederatedData
    from fedllm.pipeline.stage import Pipeline

    assert fedllm.data.FederatedData is FederatedData
    assert fedllm.pipeline.Pipeline is Pipeline
    assert callable(fedllm.model.load_tokenizer)
    for package in (fedllm.data, fedllm.model, fedllm.pipeline):
        for name in package.__all__:
            assert getattr(package, name) is not None
        with pytest.raises(AttributeError, match="has no attribute 'nope'"):
            package.nope  # noqa: B018
