"""Fixtures for the RL loop tests: prompt files and reward functions, written per test."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REWARDS_MODULE = '''
def vowel_fraction(completions, **columns):
    """Share of the letters of each completion that are vowels (learnable by a random tiny model)."""
    out = []
    for text in completions:
        letters = [c for c in text.lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / max(1, len(letters)))
    return out


def has_vowel_start(completions, **columns):
    """1 if the completion's first letter is a vowel, else 0 (a pass/fail channel)."""
    out = []
    for text in completions:
        letters = [c for c in text.lower() if c.isalpha()]
        out.append(float(bool(letters) and letters[0] in "aeiou"))
    return out


def length_is_answer(completions, answer):
    """1 if the completion has exactly `answer` characters (reads a column by name)."""
    return [float(len(c) == int(a)) for c, a in zip(completions, answer)]


def constant(completions, **columns):
    return [1.0 for _ in completions]


def broken(completions, **columns):
    raise ValueError("cannot score this")
'''


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
