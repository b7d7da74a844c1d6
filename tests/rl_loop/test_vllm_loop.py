"""The loop on the vLLM engine (CPU build): two GRPO (and two online DPO) steps with a real weight sync in between."""
import importlib.util

import pytest
from rl_loop_helpers import read_metrics, rl_recipe

import posttrain

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]


def test_grpo_on_vllm_engine(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}],
                       tmp_path / "run", engine="vllm", engine_options={"max_model_len": 128},
                       mismatch_correction="tis", lr=1e-2)
    posttrain.run(recipe, show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    last = records[-1]
    assert last["time/sync"] > 0  # weights really went into the engine
    # after the sync, vLLM samples from the updated policy: its log-probs match the trainer's
    assert last["mismatch/logprob_abs_diff_mean"] < 1e-3
    assert last["mismatch/ratio_max"] <= 2.0  # tis truncates at mismatch_clip_max


def test_online_dpo_on_vllm_engine(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """online_dpo samples through the same engines: after each DPO step the weights go into vLLM,
    and the sync probe finds the engine serving the trainer's policy."""
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}],
                       tmp_path / "run", kind="online_dpo", engine="vllm", engine_options={"max_model_len": 128}, lr=1e-2)
    posttrain.run(recipe, show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["pairs/pairs"] > 0 and r["time/sync"] > 0 for r in records)
    assert records[-1]["sync/probe_gap"] < 1e-4
