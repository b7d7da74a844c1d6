"""The same loop under the launcher: 2 processes (DDP over gloo, and DeepSpeed ZeRO-2) on CPU."""

import pytest
from rl_loop_helpers import read_metrics, rl_recipe

import posttrain

pytestmark = pytest.mark.slow




@pytest.mark.parametrize("zero", [0, 2, 3])  # DeepSpeed is a hard dependency: no skip
def test_two_processes(tiny_model_dir, prompts_file, rewards_file, tmp_path, zero):
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}],
                       tmp_path / "run", variant="grpo", advantage_scale="batch", minibatch_size=4, grad_accum=2,
                       distributed={"processes": 2, "zero": zero})
    result = posttrain.run(recipe, show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]  # rank 0 logs once per step
    assert result.stage("rl").summary["steps"] == 2
    assert (result.stage("rl").output / "model.safetensors").exists()
