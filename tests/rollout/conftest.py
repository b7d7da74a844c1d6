"""Fixtures for the rollout tests: tiny Qwen2 models (tied and untied) built once per session."""
from __future__ import annotations

import shutil

import pytest
import torch
from rollout_helpers import liven
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.models import init_model, load_model


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run these tests on one intra-op thread, restored afterwards.

    The models are tiny, so a second thread only adds synchronisation, and on the shared 2-core
    machines OpenMP threads spin-waiting under contention made generation ~50x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny Qwen2 (seed 0, tied embeddings) with lively weights, as a HF directory."""
    base = init_model(tmp_path_factory.mktemp("rollout") / "base", arch="qwen2", size="tiny")
    out = shutil.copytree(base, tmp_path_factory.mktemp("rollout") / "tiny-tied")
    model = AutoModelForCausalLM.from_pretrained(out)
    liven(model, seed=0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def untied_dir(tiny_dir, tmp_path_factory):
    """The same model with an lm_head of its own (untied, lively, seeded)."""
    out = shutil.copytree(tiny_dir, tmp_path_factory.mktemp("rollout") / "tiny-untied")
    tied = AutoModelForCausalLM.from_pretrained(out)
    tied.config.tie_word_embeddings = False
    untied = AutoModelForCausalLM.from_config(tied.config)
    state = {name: tensor.clone() for name, tensor in tied.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    state["lm_head.weight"] = torch.randn(state["lm_head.weight"].shape, generator=generator) * 0.15
    untied.load_state_dict(state)
    untied.generation_config = tied.generation_config
    untied.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    """The tiny model's tokenizer (ChatML template)."""
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def tiny_model(tiny_dir):
    """A fresh float32 copy of the tiny tied model in eval mode (tests may modify it)."""
    return load_model(tiny_dir).eval()
