"""Start-up: the command line and the config schema load without the heavy stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
