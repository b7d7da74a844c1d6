"""Fixtures for the offline (preference / reward-model / distributed) stage tests.

Models are built locally (no hub). Training tests run with one torch thread: on the shared 2-core
machines, two BLAS threads per process were measured ~6x slower per step than one.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARITHMETIC = REPO / "data" / "arithmetic"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _arithmetic_pairs(n: int, seed: int) -> list[dict]:
    """'What is A plus B?' pairs whose rejected answer is off by 1, 2 or 10 (as data/generate.py)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        wrong = a + b + rng.choice((-10, -2, -1, 1, 2, 10))
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                     "chosen": [{"role": "assistant", "content": str(a + b)}],
                     "rejected": [{"role": "assistant", "content": str(abs(wrong) if wrong != a + b else wrong + 3)}]})
    return rows


@pytest.fixture(scope="session")
def preference_data(tmp_path_factory) -> dict:
    """Data block for the bundled arithmetic preference pairs (generated here if the files are missing)."""
    train, evaluation = ARITHMETIC / "preference.jsonl", ARITHMETIC / "preference_eval.jsonl"
    if not (train.is_file() and evaluation.is_file()):
        folder = tmp_path_factory.mktemp("pref")
        train = _write_jsonl(folder / "preference.jsonl", _arithmetic_pairs(2000, 1))
        evaluation = _write_jsonl(folder / "preference_eval.jsonl", _arithmetic_pairs(200, 2))
    return {"path": str(train), "eval_path": str(evaluation)}


@pytest.fixture(scope="session")
def small_preference_data(tmp_path_factory, preference_data) -> dict:
    """32 training and 16 eval pairs from the arithmetic data: for tests that check a stage runs."""
    folder = tmp_path_factory.mktemp("small-pref")
    train = Path(preference_data["path"]).read_text().splitlines()[:32]
    evaluation = Path(preference_data["eval_path"]).read_text().splitlines()[:16]
    (folder / "train.jsonl").write_text("\n".join(train) + "\n")
    (folder / "eval.jsonl").write_text("\n".join(evaluation) + "\n")
    return {"path": str(folder / "train.jsonl"), "eval_path": str(folder / "eval.jsonl")}


@pytest.fixture(scope="session")
def sft_data() -> dict:
    """Data block for the bundled arithmetic chat SFT data."""
    train = ARITHMETIC / "sft.jsonl"
    assert train.is_file(), f"{train} is tracked in git and missing: restore it or rerun data/generate.py"
    return {"path": str(train), "eval_path": str(ARITHMETIC / "sft_eval.jsonl")}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Qwen2 (~140k parameters, head_dim 32), seed 0."""
    from posttrain.models import init_model

    return init_model(tmp_path_factory.mktemp("tiny") / "model", arch="qwen2", size="tiny", seed=0)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> Path:
    """A second tiny Qwen2 with different weights (seed 1), e.g. as an explicit reference model."""
    from posttrain.models import init_model

    return init_model(tmp_path_factory.mktemp("tiny1") / "model", arch="qwen2", size="tiny", seed=1)


@pytest.fixture(scope="session")
def arithmetic_sft_model(tmp_path_factory, tiny_model, sft_data) -> Path:
    """The tiny model after 400 SFT steps on arithmetic chats (~50 s): a starting point that knows the task a little."""
    import posttrain

    result = posttrain.run_stage("sft", model=str(tiny_model), data=sft_data, max_steps=400, batch_size=32,
                                 lr=2e-3, lr_scheduler="constant", max_length=64, logging_steps=50, seed=0,
                                 run_dir=tmp_path_factory.mktemp("sft-run"))
    return result.output
