"""A noisy-verifier correction the advantages cancel: which combinations do, and the warning that
`posttrain validate` / `posttrain run` log for them (preflight).

Rates fp 0.1, fn 0.2 (J = 1 - 0.1 - 0.2 = 0.7): backward maps a 0/1 score r to r / 0.7 - 0.1 / 0.7
(a = 1.4286, b = -0.1429); forward to r - (1 - 0.2) (a = 1, b = -0.8)."""
import logging

import pytest

from posttrain.recipe import resolve_recipe
from posttrain.recipe.preflight import preflight
from posttrain.rl.loop.advantages import noise_correction_warnings, reward_transform_effect
from posttrain.stages.grpo import GRPOConfig
from posttrain.stages.ppo import PPOConfig

BACKWARD = {"noise_correction": "backward", "fp_rate": 0.1, "fn_rate": 0.2}
FORWARD = {"noise_correction": "forward", "fn_rate": 0.2}
A, B = 1 / 0.7, -0.1 / 0.7


def config(kind="grpo", rewards=None, **keys):
    cls = GRPOConfig if kind == "grpo" else PPOConfig
    return cls.model_validate({"kind": kind, "data": "x.jsonl", "rewards": rewards or [{"verifier": "math", **BACKWARD}],
                               "group_size": 4, **keys})


# (stage keys, k for backward, k for forward): k = 1 cancelled, k = A only rescaled, None changes the update
CASES = [
    ({"variant": "grpo"}, 1.0, 1.0),                             # mean and std of the group remove a and b
    ({"variant": "grpo", "advantage_scale": "batch"}, 1.0, 1.0),  # the batch std removes a as well
    ({"variant": "cispo"}, 1.0, 1.0),
    ({"variant": "dr_grpo"}, A, 1.0),                            # mean-centring only: a remains
    ({"variant": "dr_grpo", "whiten_advantages": True}, 1.0, 1.0),
    ({"variant": "rloo", "kl_coef": 0.0}, A, 1.0),               # leave-one-out mean: a remains
    ({"variant": "rloo"}, None, 1.0),                            # KL in the reward is not scaled by a
    ({"variant": "dapo"}, None, 1.0),                            # nor is the overlong punishment
    ({"variant": "reinforce_pp", "kl_coef": 0.0}, 1.0, 1.0),     # group baseline, then batch whitening
    ({"variant": "reinforce_pp", "kl_coef": 0.0, "group_size": 1, "gamma": 0.9}, None, None),  # discounted shift
]


@pytest.mark.parametrize("keys, backward, forward", CASES, ids=[str(c[0]) for c in CASES])
def test_which_advantages_cancel_an_affine_reward_change(keys, backward, forward):
    stage = config(**keys)
    for (scale, shift), expected in (((A, B), backward), ((1.0, -0.8), forward)):
        k = reward_transform_effect(stage, scale, shift)
        assert (k is None) == (expected is None), (keys, scale, k)
        if expected is not None:
            assert k == pytest.approx(expected, rel=1e-3), (keys, scale)


def test_a_critic_is_not_fooled():
    """gae reads the critic's values, which do not move with the reward: nothing cancels."""
    stage = config("ppo", kl_coef=0.0, group_size=1)
    assert reward_transform_effect(stage, A, B) is None and reward_transform_effect(stage, 1.0, -0.8) is None
    assert noise_correction_warnings(stage, "stages.rl") == []


def test_the_warning_names_the_key_and_says_what_is_left():
    [cancelled] = noise_correction_warnings(config(variant="grpo"), "stages.rl")
    assert cancelled.startswith("stages.rl.rewards[0].noise_correction: has no effect in this stage "
                                "('backward' maps the score r to 1.429 r - 0.1429): advantage_estimator "
                                "'group_normalized' with advantage_scale 'group' removes a shift and a scale"), cancelled
    [rescaled] = noise_correction_warnings(config(variant="dr_grpo"), "stages.rl")
    assert rescaled.startswith("stages.rl.rewards[0].noise_correction: only multiplies this stage's advantages "
                               "by 1.429"), rescaled
    [forward] = noise_correction_warnings(config(variant="dr_grpo", rewards=[{"verifier": "math", **FORWARD}]), "s")
    assert "has no effect" in forward and "removes a shift common" in forward
    assert noise_correction_warnings(config(variant="dapo"), "stages.rl") == []  # the overlong term makes it count


def test_channels_scaled_differently_are_reweighed_so_nothing_is_cancelled():
    """Backward on one of two weighted channels changes their relative weight (a = 1.43 vs 1);
    the same correction on both scales the sum alike and is cancelled again; a channel of
    weight 0 does not count; absolute reward bands see the shifted rewards."""
    other = {"function": "posttrain.rewards.arithmetic:final_number_matches", "weight": 0.5}
    assert noise_correction_warnings(config(rewards=[{"verifier": "math", **BACKWARD}, other]), "s") == []
    assert len(noise_correction_warnings(config(rewards=[{"verifier": "math", **BACKWARD}, {**other, **BACKWARD}]),
                                         "s")) == 1
    assert len(noise_correction_warnings(config(rewards=[{"verifier": "math", **BACKWARD}, {**other, "weight": 0.0}]),
                                         "s")) == 1
    assert noise_correction_warnings(config(reward_filter="bands", reward_filter_bands=[[0.5, 2.0]]), "s") == []
    # RAFT: the advantages are all 1, but which completion is kept compares rewards with the threshold
    assert noise_correction_warnings(config(variant="raft", reward_filter_min=0.5), "s") == []
    [unchanged] = noise_correction_warnings(config(variant="raft"), "s")  # best_of_n alone: argmax is affine-invariant
    assert "has no effect" in unchanged


def test_preflight_logs_the_warning_for_validate_and_run(tmp_path, caplog):
    (tmp_path / "config.json").write_text("{}")
    rl = tmp_path / "rl.jsonl"
    rl.write_text('{"prompt": "1 plus 1?", "answer": "2"}\n')
    channel = {"verifier": "math", **BACKWARD}
    recipe = resolve_recipe({"name": "p", "model": str(tmp_path), "run_dir": str(tmp_path / "run"), "stages": {
        "grpo": {"kind": "grpo", "data": str(rl), "rewards": [channel]},
        "ppo": {"kind": "ppo", "data": str(rl), "rewards": [channel]}}}, base_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="posttrain.recipe.preflight"):
        preflight(recipe)
    warned = [r.getMessage() for r in caplog.records if r.name == "posttrain.recipe.preflight"]
    assert len(warned) == 1 and warned[0].startswith("warning: stages.grpo.rewards[0].noise_correction: has no effect")
