"""Helpers shared by the RL loop tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

import json
from pathlib import Path

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


def even_prompts_constant(completions, prompt, **columns):
    """1 for every completion of an even-numbered prompt (an all-equal group), else the vowel fraction."""
    vowels = vowel_fraction(completions)
    return [1.0 if int(p.split()[1].rstrip(":")) % 2 == 0 else v for p, v in zip(prompt, vowels)]


def constant(completions, **columns):
    return [1.0 for _ in completions]


def broken(completions, **columns):
    raise ValueError("cannot score this")
'''


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rl_recipe(model_dir: Path, data: Path, rewards: list[dict], run_dir: Path, **stage) -> dict:
    """A one-stage RL recipe on a tiny model: 2 steps of 4 prompts x 4 completions x 6 tokens."""
    config = {"kind": "grpo", "data": str(data), "rewards": rewards, "prompts_per_step": 4, "group_size": 4,
              "max_tokens": 6, "total_steps": 2, "lr": 1e-3, **stage}
    return {"name": "rl-test", "model": str(model_dir), "run_dir": str(run_dir), "stages": {"rl": config}}


def read_metrics(run_dir: Path, stage: str = "rl") -> list[dict]:
    path = run_dir / stage / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_killed_then_resumed(recipe: dict, kill_at: int, monkeypatch) -> None:
    """Run ``recipe`` with the loop interrupted at step ``kill_at`` (after its checkpoints so far),
    then rerun it to the end: the rerun resumes from the last checkpoint."""
    import pytest

    import posttrain
    from posttrain.rl.loop import trainer

    real_step = trainer.train_step

    def crash(session, step):
        if step == kill_at:
            raise KeyboardInterrupt("simulated kill")
        return real_step(session, step)

    monkeypatch.setattr(trainer, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        posttrain.run(recipe, show_progress=False)
    monkeypatch.setattr(trainer, "train_step", real_step)
    posttrain.run(recipe, show_progress=False)
