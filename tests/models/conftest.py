"""Fixtures for the model-factory tests: one tiny model per architecture per session."""
from __future__ import annotations

import pytest

from posttrain.models import init_model


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """A tiny Qwen2 model directory (seed 0), shared by the tests of this folder."""
    return init_model(tmp_path_factory.mktemp("models") / "qwen2-tiny", arch="qwen2", size="tiny")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny Llama model directory (seed 0)."""
    return init_model(tmp_path_factory.mktemp("models") / "llama-tiny", arch="llama", size="tiny")


@pytest.fixture(params=["qwen2", "llama"])
def tiny_model(request, tiny_qwen2, tiny_llama):
    """Each architecture's tiny model in turn."""
    return {"qwen2": tiny_qwen2, "llama": tiny_llama}[request.param]
