"""Shared fixtures: a tiny model built locally once per session, small data files."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# vLLM on CPU: keep its KV cache small and let it use both cores (see ../shared/ENVIRONMENT.md).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 (~140k parameters) with a locally trained tokenizer, seed 0."""
    from posttrain.models import init_model

    return init_model(tmp_path_factory.mktemp("tiny") / "model", arch="qwen2", size="tiny", seed=0)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def chat_sft_file(tmp_path) -> Path:
    """200 'What is A plus B?' chat examples (seeded)."""
    rng = random.Random(0)
    rows = []
    for _ in range(200):
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        rows.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                  {"role": "assistant", "content": str(a + b)}]})
    return write_jsonl(tmp_path / "sft.jsonl", rows)
