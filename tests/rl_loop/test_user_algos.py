"""A loss and an advantage estimator registered in this file are usable from a recipe: the
schema accepts their names, the loop calls them with the config keys they declared, and their
stats reach metrics.jsonl. The loop never branches on a name, so nothing else is needed."""
import pytest
import torch
from rl_loop_helpers import read_metrics, rl_recipe

import posttrain
from posttrain.errors import ConfigError
from posttrain.rl.algos import register_advantage_estimator, register_policy_loss

CALLS = {"loss": [], "estimator": []}


@register_policy_loss("test_vanilla_pg_clipped", knobs={"bound": "clip_ratio_high"})
def vanilla_pg(logprobs, old_logprobs, advantages, response_mask=None, bound=None):
    """-A * log pi per token (REINFORCE), advantages clamped to +-bound; stats: the bound seen."""
    CALLS["loss"].append(bound)
    adv = advantages.clamp(-bound, bound)
    adv = adv[:, None] if adv.dim() == 1 else adv
    return -(adv * logprobs) * response_mask, {"test_bound": torch.tensor(bound)}


@register_advantage_estimator("test_centered", min_group_size=2, knobs={"offset": "gamma"})
def centered(rewards, group_size, offset):
    """Group-centred rewards plus a constant read from the `gamma` key (to see the knob arrive)."""
    CALLS["estimator"].append(offset)
    grouped = rewards.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1) + offset, {"seen_offset": torch.tensor(offset)}


@pytest.mark.slow
def test_user_registered_loss_and_estimator_train_from_a_recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    recipe = rl_recipe(tiny_model_dir, prompts_file, rewards, tmp_path / "run", variant="dr_grpo",
                       policy_loss="test_vanilla_pg_clipped", clip_ratio_high=0.7,
                       advantage_estimator="test_centered", gamma=0.25)
    posttrain.run(recipe, show_progress=False)
    assert CALLS["loss"] and set(CALLS["loss"]) == {0.7}
    assert CALLS["estimator"] and set(CALLS["estimator"]) == {0.25}
    last = read_metrics(tmp_path / "run")[-1]
    assert last["test_bound"] == pytest.approx(0.7)
    assert last["advantages/seen_offset"] == pytest.approx(0.25)


def test_an_unregistered_name_is_a_config_error_listing_the_registered_ones(tmp_path):
    recipe = rl_recipe(tmp_path, tmp_path / "p.jsonl", [{"verifier": "math"}], tmp_path / "run", policy_loss="nosuch")
    with pytest.raises(ConfigError, match="unknown policy loss 'nosuch'.*test_vanilla_pg_clipped"):
        posttrain.resolve(recipe)
