"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The converted SmolLM2-135M directory (converted once per cache, about 20 s)."""
    from fedllm.model.load import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="session")
def data_tokenizer() -> Any:
    """The SmolLM2 tokenizer, for the data tests (fast; chat template included)."""
    from fedllm.model.load import load_tokenizer

    return load_tokenizer("smollm2-135m")
