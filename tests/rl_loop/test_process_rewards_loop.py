"""Process rewards in the RL loop: the `process_reward_model` channel splits and scores steps, the
loop puts the weighted step rewards on the tokens that end the steps, a token-level estimator adds
them to the outcome, and the schema refuses what cannot use them."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from rl_loop_helpers import read_metrics, rl_recipe

import posttrain
from posttrain.rl.algos import reinforce_pp
from posttrain.rl.loop.advantages import AdvantageInputs, compute_advantages, process_token_rewards
from posttrain.rl.rewards import RewardChannelConfig
from posttrain.rl.scored import ProcessRewards

REPO = Path(__file__).resolve().parents[2]
ANSWER = "ones 3+2+8=13, tens 4+3+3+1=11, so 113"


@pytest.fixture(scope="module")
def tiny_prm(tiny_model_dir, tmp_path_factory) -> Path:
    """A PRM on the tiny model after a few steps (its scores only need to be a PRM's)."""
    return posttrain.prm(model=str(tiny_model_dir), data={"path": str(REPO / "data/prm/train.jsonl"), "max_samples": 64},
                         step_separator=", ", max_steps=4, batch_size=16, lr=1e-3, max_length=80,
                         run_dir=tmp_path_factory.mktemp("prm")).output


def _channel(path, **options):
    from posttrain.rl.process_rewards import ProcessRewardChannel

    return ProcessRewardChannel(RewardChannelConfig(process_reward_model=str(path), options=options))


def test_channel_scores_each_step_where_it_ends(tiny_prm):
    """Three steps found at characters 12, 29, 37 of the answer; 'progress' telescopes to the last
    step's score minus the score before the first step; the logged score is the sum per answer."""
    prompt = [[{"role": "user", "content": "What is 43 plus 32 plus 38?"}]] * 2
    score = _channel(tiny_prm).score([ANSWER, "113"], {"prompt": prompt})
    progress = _channel(tiny_prm, reward="progress").score([ANSWER, "113"], {"prompt": prompt})
    assert score.steps.char_ends == [[12, 29, 37], [2]]
    p = score.steps.step_rewards[0]
    assert len(p) == 3 and all(0.0 < x < 1.0 for x in p)
    assert score.scores[0] == pytest.approx(sum(p), abs=1e-6)
    _, initial = _channel(tiny_prm).prm.step_scores(prompt[:1], [ANSWER.split(", ")])
    assert progress.steps.step_rewards[0] == pytest.approx([p[0] - initial[0], p[1] - p[0], p[2] - p[1]], abs=1e-6)
    assert progress.scores[0] == pytest.approx(p[2] - initial[0], abs=1e-6)


def test_step_rewards_land_on_the_tokens_that_end_the_steps(tiny_model_dir):
    """Weighted step rewards 0.1, 0.2, 0.3 sit on the tokens whose text ends with '3', '1', '3';
    two channels add; an empty completion gets nothing."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    rollout = SimpleNamespace(completion_ids=[ids, []])
    steps = ProcessRewards([[0.1, 0.2, 0.3], []], [[12, 29, 37], []])
    scored = SimpleNamespace(rollout=rollout, process={"a": steps, "b": steps.weighted(2.0)})
    width = len(ids) + 2
    out = process_token_rewards(scored, tokenizer, width)
    placed = out[0].nonzero().flatten().tolist()
    assert [tokenizer.decode(ids[:i + 1])[-1] for i in placed] == ["3", "1", "3"]
    assert out[0, placed].tolist() == pytest.approx([0.3, 0.6, 0.9], abs=1e-6)  # 1 x + 2 x
    assert out[1].abs().sum() == 0 and out.shape == (2, width)
    assert process_token_rewards(SimpleNamespace(process={}), tokenizer, width) is None


def test_token_level_estimator_adds_step_rewards_to_the_outcome():
    """reinforce_pp (G = 1, no KL): token rewards are the outcome at the last token plus the step
    rewards where steps end; the advantages are reinforce_pp of exactly those token rewards."""
    config = SimpleNamespace(advantage_estimator="reinforce_pp", group_size=1, kl_placement="reward", kl_coef=0.0,
                             kl_estimator="k1", gamma=1.0, whiten_advantages=False)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    process = torch.tensor([[0.0, 0.5, 0.0, 0.0], [0.25, 0.0, 0.0, -1.0]])
    inputs = AdvantageInputs(rewards=torch.tensor([1.0, 0.0]), response_mask=mask, old_logprobs=torch.zeros(2, 4),
                             ref_logprobs=None, values=None, kl_coef=0.0, process_rewards=process)
    advantages, _, _ = compute_advantages(config, inputs, lambda r: (r, slice(None)))
    expected_rewards = torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.25, 0.0, 0.0, -1.0]])  # outcome 1 at row 0's last token
    expected, _ = reinforce_pp(expected_rewards, response_mask=mask)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    sequence = SimpleNamespace(**{**vars(config), "advantage_estimator": "group_normalized", "advantage_scale": "group"})
    with pytest.raises(ValueError, match="sequence-level"):
        compute_advantages(sequence, inputs, lambda r: (r, slice(None)))


def test_loop_runs_with_a_process_channel(tiny_model_dir, prompts_file, rewards_file, tiny_prm, tmp_path):
    """reinforce_pp with the vowel reward plus a PRM channel at weight 0.5: the weighted step
    rewards are logged (reward/process = 0.5 x the channel's mean) and stay out of `reward`."""
    rewards = [{"function": f"{rewards_file}:vowel_fraction"},
               {"process_reward_model": str(tiny_prm), "weight": 0.5, "name": "prm"}]
    run = tmp_path / "run"
    posttrain.run(rl_recipe(tiny_model_dir, prompts_file, rewards, run, variant="reinforce_pp", max_tokens=8),
                  show_progress=False)
    for record in read_metrics(run):
        assert record["reward/process"] == pytest.approx(0.5 * record["rewards/prm/mean"], abs=1e-5)
        assert record["reward"] == pytest.approx(record["rewards/vowel_fraction/mean"], abs=1e-6)


BASE = {"kind": "grpo", "model": "m", "data": "d.jsonl",
        "rewards": [{"verifier": "math"}, {"process_reward_model": "prm_dir", "weight": 0.5}]}


@pytest.mark.parametrize("keys, message", [
    ({}, "advantage_estimator 'group_normalized' scores whole completions. Use a token-level one"),
    ({"kind": "online_dpo"}, "online_dpo ranks whole answers"),
    ({"variant": "reinforce_pp", "environment": {"name": "tools", "tools": ["calculator"]}}, "multi-turn episodes"),
])
def test_schema_refuses_process_rewards_it_cannot_use(keys, message):
    from posttrain.stages.registry import get_stage_kind

    data = {**BASE, **keys}
    with pytest.raises(ValidationError, match=message):
        get_stage_kind(data["kind"]).config_cls.model_validate(data)
    assert get_stage_kind("grpo").config_cls.model_validate({**BASE, "variant": "reinforce_pp"})


def test_preflight_names_a_folder_that_is_not_a_prm(tiny_model_dir, tmp_path):
    from posttrain.rl.rewards import reward_problems

    configs = [RewardChannelConfig(process_reward_model=str(tiny_model_dir)),
               RewardChannelConfig(process_reward_model=str(tiny_model_dir), options={"reward": "value"})]
    problems = reward_problems(configs, "stages.rl.rewards", tmp_path, None, "data")
    assert "stages.rl.rewards[0] (process_reward_model)" in problems[0] and "has no prm.json" in problems[0]
    assert "options.reward 'value'; expected score or progress" in problems[1]
