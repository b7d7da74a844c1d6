"""PF-PPO-style reward filtering in the loop: which completions enter the loss, and config checks."""
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from rl_loop_helpers import read_metrics, rl_recipe

import posttrain
from posttrain.rl.loop.experience import reward_filter_mask
from posttrain.stages.grpo import GRPOConfig


def _config(**kw):
    return SimpleNamespace(reward_filter="none", reward_filter_bands=[], reward_filter_min=None, **kw)


def test_filter_masks():
    """Two groups of 3: [0.1, 0.9, 0.5] and [0.0, 0.0, 1.0].
    bands [[0.4, 1.0]] keeps 0.9, 0.5 and 1.0; best_worst keeps argmax and argmin of each group."""
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.0, 0.0, 1.0])
    assert reward_filter_mask(_config(), rewards, 3, seed=0) is None
    bands = _config()
    bands.reward_filter, bands.reward_filter_bands = "bands", [(0.4, 1.0)]
    assert reward_filter_mask(bands, rewards, 3, seed=0).tolist() == [False, True, True, False, False, True]
    best_worst = _config()
    best_worst.reward_filter = "best_worst"
    keep = reward_filter_mask(best_worst, rewards, 3, seed=0)
    assert keep[:3].tolist() == [True, True, False] and keep[5] and keep[3:5].sum() == 1


def test_bands_mode_needs_bands(tmp_path):
    base = {"kind": "grpo", "model": "m", "data": "d.jsonl", "rewards": [{"verifier": "math"}]}
    with pytest.raises(ValidationError, match="needs reward_filter_bands"):
        GRPOConfig.model_validate({**base, "reward_filter": "bands"})
    with pytest.raises(ValidationError, match="lo <= hi"):
        GRPOConfig.model_validate({**base, "reward_filter": "bands", "reward_filter_bands": [[1.0, 0.0]]})


def test_filtered_run_logs_kept_fraction(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    posttrain.run(rl_recipe(tiny_model_dir, prompts_file, rewards, tmp_path / "run", reward_filter="best_worst"),
                  show_progress=False)
    records = read_metrics(tmp_path / "run")
    # 4 completions per prompt, best + worst kept = half (fewer only if a whole group is NaN)
    assert [r["reward_filter/kept_fraction"] for r in records] == [0.5, 0.5]
