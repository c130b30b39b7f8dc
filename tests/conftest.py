"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

# The default run is derandomized: hypothesis draws the same examples on every fresh
# clone, so `make test` passes or fails the same way each time (a property that fails
# one run in twenty is a failing test, to be found on purpose). Explore new examples
# with FEDLLM_HYPOTHESIS=explore.
hypothesis_settings.register_profile("default", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("FEDLLM_HYPOTHESIS", "default"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one torch thread each (and in
    # every process a test starts: CLI runs, Flower nodes), so they don't oversubscribe
    # the cores; set before anything imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


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
