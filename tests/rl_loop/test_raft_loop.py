"""RAFT in the loop: what `save_rollouts` records of each iteration, and RAFT's config checks."""
import json
import math

import pytest
from pydantic import ValidationError
from rl_loop_helpers import read_metrics, rl_recipe

import posttrain
from posttrain.stages.grpo import GRPOConfig

THRESHOLD = 0.5


def test_raft_trains_on_the_best_completion_above_the_threshold(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """2 iterations of 4 prompts x 4 completions: per group the trained row is the first best one
    and only if it reaches the threshold; every scorable row has advantage 1; the kept fraction
    logged is the trained rows' share; each iteration's data is a file of its own."""
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    run = tmp_path / "run"
    posttrain.run(rl_recipe(tiny_model_dir, prompts_file, rewards, run, variant="raft", reward_filter_min=THRESHOLD,
                            save_rollouts=True, max_tokens=8), show_progress=False)
    metrics = read_metrics(run)
    files = sorted((run / "rl" / "rollouts").iterdir())
    assert [f.name for f in files] == ["step-000001.rank0.jsonl", "step-000002.rank0.jsonl"]
    branches = set()
    for step, (path, record) in enumerate(zip(files, metrics), start=1):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == 16 and {r["step"] for r in rows} == {step}
        assert all(r["advantage"] == 1.0 for r in rows if not math.isnan(r["reward"]))
        for group in range(4):
            members = [r for r in rows if r["group"] == group]
            best = max(r["reward"] for r in members)
            trained = [r for r in members if r["trained"]]
            if best >= THRESHOLD:
                first_best = next(r for r in members if r["reward"] == best)
                assert trained == [first_best]
            else:
                assert trained == []
            branches.add(best >= THRESHOLD)
        assert record["reward_filter/kept_fraction"] == pytest.approx(sum(r["trained"] for r in rows) / 16)
        assert rows[0]["rewards"].keys() == {"vowel_fraction"} and rows[0]["prompt"].startswith("Item ")
    assert branches == {True, False}  # both a kept best and a group with none above the threshold


BASE = {"kind": "grpo", "model": "m", "data": "d.jsonl", "rewards": [{"verifier": "math"}]}


def test_raft_needs_a_filter_and_a_threshold_needs_a_filter():
    with pytest.raises(ValidationError, match="learns from the rewards only through reward_filter"):
        GRPOConfig.model_validate({**BASE, "variant": "raft", "reward_filter": "none"})
    with pytest.raises(ValidationError, match="reward_filter_min is the threshold of a reward_filter"):
        GRPOConfig.model_validate({**BASE, "reward_filter_min": 1.0})
    config = GRPOConfig.model_validate({**BASE, "variant": "raft", "reward_filter_min": 1.0})
    assert (config.advantage_estimator, config.policy_loss, config.reward_filter, config.kl_coef) == \
        ("raft", "pg", "best_of_n", 0.0)


@pytest.mark.parametrize("keys, message", [
    ({"reward_filter": "best_worst"}, "learns from the rewards only through reward_filter, which is 'best_worst'"),
    ({"loss_aggregation": "seq-mean-token-mean"}, "set loss_aggregation: token-mean"),
    ({"whiten_advantages": True}, "whiten_advantages would turn its constant advantages into 0"),
    ({"reward_filter_min": float("nan")}, "reward_filter_min"),
])
def test_raft_refuses_what_would_not_be_raft(keys, message):
    with pytest.raises(ValidationError, match=message):
        GRPOConfig.model_validate({**BASE, "variant": "raft", **keys})


def test_threshold_is_compared_in_the_rewards_precision():
    """A float32 reward of 0.7 is 0.699999988; a threshold of 0.7 must still keep it."""
    import torch

    from posttrain.rl.loop.experience import reward_filter_mask

    config = GRPOConfig.model_validate({**BASE, "variant": "raft", "reward_filter_min": 0.7})
    keep = reward_filter_mask(config, torch.tensor([0.7, 0.1, 0.69, 0.6], dtype=torch.float32), 2, seed=0)
    assert keep.tolist() == [True, False, False, False]


def test_nothing_kept_means_no_step_and_iteration_models_stay(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """A threshold no answer reaches (vowel fraction <= 1 < 2): every step keeps nothing, takes no
    optimizer step (Adam would move on momentum) and the policy is the input model, bit for bit;
    save_model_steps leaves each step's model in models/ after the stage succeeds."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    posttrain.run(rl_recipe(tiny_model_dir, prompts_file, rewards, run, variant="raft", reward_filter_min=2.0,
                            save_model_steps=1), show_progress=False)
    metrics = read_metrics(run)
    assert [(r["optimizer_steps"], r["optimizer_steps_skipped"], r["reward_filter/kept_fraction"]) for r in metrics] \
        == [(0, 1, 0.0), (0, 1, 0.0)]
    before = load_file(tiny_model_dir / "model.safetensors")
    for folder in (run / "rl" / "model", run / "rl" / "models" / "step-000001", run / "rl" / "models" / "step-000002"):
        after = load_file(folder / "model.safetensors")
        assert all(torch_equal(before[k], after[k]) for k in before), folder
    assert not (run / "rl" / "checkpoints").exists()


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_rollout_groups_are_numbered_over_processes():
    """Process 1 of 2 took the step's prompts 1 and 3: its two groups are 1 and 3."""
    from types import SimpleNamespace

    import torch

    from posttrain.rl.loop.rollout_log import rollout_records

    rollout = SimpleNamespace(completions=["a", "b", "c", "d"], finish_reasons=["stop"] * 4, episodes=None)
    scored = SimpleNamespace(rollout=rollout, rows=[{"prompt": "p"}] * 4, group_size=2,
                             rewards=torch.tensor([1.0, float("nan"), 0.0, 1.0]), channel_scores={"c": torch.zeros(4)})
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    exp = SimpleNamespace(advantages=torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, 0.5], [0.5, 0.5]]),
                          response_mask=mask * torch.tensor([[1.0], [0.0], [0.0], [1.0]]))
    records = rollout_records(3, scored, exp, SimpleNamespace(response_mask=mask), rank=1, processes=2)
    assert [r["group"] for r in records] == [1, 1, 3, 3]
    assert [r["trained"] for r in records] == [True, False, False, True]
    assert [r["reward"] for r in records] == [1.0, None, 0.0, 1.0]  # NaN (unscorable) is written as null
    assert [r["advantage"] for r in records] == [1.0, 0.0, 0.5, 0.5]


def test_raft_with_several_sft_steps_per_iteration(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """ppo_epochs 2 x 2 minibatches: four SFT steps per iteration, each either taken or skipped
    (a minibatch without a kept answer); the policy moves."""
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    run = tmp_path / "run"
    posttrain.run(rl_recipe(tiny_model_dir, prompts_file, rewards, run, variant="raft", reward_filter_min=THRESHOLD,
                            ppo_epochs=2, minibatch_size=8, max_tokens=8), show_progress=False)
    metrics = read_metrics(run)
    assert all(r["optimizer_steps"] + r["optimizer_steps_skipped"] == 4 for r in metrics)
    assert sum(r["optimizer_steps"] for r in metrics) > 0 and all(r["loss/policy"] > 0 for r in metrics)
