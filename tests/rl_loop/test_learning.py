"""Learning: on a reward a random tiny model can learn (the share of vowels among the letters it
writes, ~0.37 at initialisation), the mean reward rises clearly within a bounded number of steps.

Seeded; the bars are far below what the runs reach (GRPO: ~0.37 -> ~0.6 by step 16; PPO similar),
so they fail on a broken update (wrong sign, no gradient, stale weights), not on noise.
"""
import pytest
from rl_loop_helpers import read_metrics, rl_recipe

import posttrain

pytestmark = pytest.mark.slow

COMMON = {"prompts_per_step": 8, "group_size": 8, "max_tokens": 8, "lr": 1e-2, "kl_coef": 0.0, "total_steps": 16, "seed": 0}


def rewards_curve(tiny_model_dir, prompts_file, rewards_file, run_dir, **stage):
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}], run_dir,
                       **{**COMMON, **stage})
    posttrain.run(recipe, show_progress=False)
    return [r["reward"] for r in read_metrics(run_dir)]


def assert_learns(curve, margin=0.1):
    first, last = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
    assert last > first + margin, f"reward did not rise: first {first:.3f}, last {last:.3f}, curve {curve}"


def test_grpo_learns(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    assert_learns(rewards_curve(tiny_model_dir, prompts_file, rewards_file, tmp_path / "grpo", variant="grpo"))


def test_ppo_learns(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    assert_learns(rewards_curve(tiny_model_dir, prompts_file, rewards_file, tmp_path / "ppo", kind="ppo",
                                critic_lr=1e-2, group_size=4, prompts_per_step=16))


def test_raft_learns(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """SFT on the best of each prompt's 8 completions (RAFT) moves the reward as GRPO does."""
    assert_learns(rewards_curve(tiny_model_dir, prompts_file, rewards_file, tmp_path / "raft", variant="raft"))
