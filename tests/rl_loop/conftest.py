"""Fixtures for the RL loop tests: prompt files and reward functions, written per test."""
from __future__ import annotations

from pathlib import Path

import pytest
from rl_loop_helpers import REWARDS_MODULE, write_jsonl


@pytest.fixture
def rewards_file(tmp_path) -> Path:
    """A user reward module on disk (referenced as FILE:function)."""
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS_MODULE)
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    """32 short string prompts with an `answer` column."""
    rows = [{"prompt": f"Item {i}:", "answer": str(i % 5)} for i in range(32)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)
