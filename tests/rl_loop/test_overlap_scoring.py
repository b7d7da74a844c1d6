"""overlap_scoring: rewards scored while the log-probs are computed; the same run, less waiting."""
from __future__ import annotations

import textwrap

import pytest
from rl_loop_helpers import read_metrics, rl_recipe

import posttrain

SLOW_VERIFIER = textwrap.dedent("""
    import time

    def slow_vowels(completion):
        time.sleep(0.03)  # a verifier that takes real time, like a sandboxed test run
        letters = [c for c in completion.lower() if c.isalpha()]
        return sum(c in "aeiou" for c in letters) / max(1, len(letters))
""")


def _run(tmp_path, tiny_model_dir, prompts_file, rewards_file, overlap: bool) -> list[dict]:
    verifier = tmp_path / "slow.py"
    verifier.write_text(SLOW_VERIFIER)
    rewards = [{"verifier": f"{verifier}:slow_vowels", "workers": 2},
               {"function": f"{rewards_file}:has_vowel_start", "weight": 0.5}]
    run_dir = tmp_path / f"run_{overlap}"
    recipe = rl_recipe(tiny_model_dir, prompts_file, rewards, run_dir, overlap_scoring=overlap,
                       kl_coef=0.04)  # a reference model: its forward is what scoring overlaps
    posttrain.run(recipe, show_progress=False)
    return read_metrics(run_dir)


def test_overlapped_scoring_gives_the_same_run_and_reports_the_overlap(tmp_path, tiny_model_dir, prompts_file,
                                                                      rewards_file):
    overlapped = _run(tmp_path, tiny_model_dir, prompts_file, rewards_file, overlap=True)
    serial = _run(tmp_path, tiny_model_dir, prompts_file, rewards_file, overlap=False)
    assert len(overlapped) == len(serial) == 2
    for a, b in zip(overlapped, serial):
        same = {k for k in a if not k.startswith(("time", "tokens_per_s/", "memory/"))}
        assert same == {k for k in b if not k.startswith(("time", "tokens_per_s/", "memory/"))}
        for key in sorted(same):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
        assert "time/score_wait" not in b and "time/score_overlapped" not in b
        assert a["time/score"] > 0.03 * 16 / 2 * 0.9  # the slow verifier really ran
        assert a["time/score_wait"] < a["time/score"]
        assert a["time/score_overlapped"] == pytest.approx(a["time/score"] - a["time/score_wait"], abs=1e-9)
        assert a["time/score_overlapped"] > 0
