"""End to end on a tiny model with the hf engine: every variant and PPO run, save, and resume."""
import json
from types import SimpleNamespace

import pytest
import torch
from rl_loop_helpers import read_metrics, rl_recipe, run_killed_then_resumed
from transformers import AutoModelForCausalLM, AutoTokenizer

import posttrain
from posttrain.rl.loop.dist import Processes
from posttrain.rl.loop.metrics import PhaseTimer
from posttrain.rl.loop.models import load_policy
from posttrain.rl.loop.sampling import PromptStream, collect_rollouts
from posttrain.rl.rewards import RewardChannelConfig, RewardScorer
from posttrain.rl.rollout import make_engine
from posttrain.stages.grpo import VARIANT_PRESETS, GRPOConfig

STEP_METRICS = ("reward", "reward_std", "entropy", "clip_frac_low", "clip_frac_high", "advantages/mean",
                "advantages/std", "response_length/mean", "response_length/max", "truncation_rate",
                "mismatch/logprob_abs_diff_mean", "tokens_per_s/generate", "tokens_per_s/train", "time/generate",
                "time/score", "time/logprobs", "time/update", "time/sync", "time/step", "grad_norm", "lr",
                "memory/generate/rss_mb_max", "memory/logprobs/rss_mb_max", "memory/update/rss_mb_max",
                "memory/sync/rss_mb_max")


@pytest.mark.parametrize("variant", sorted(VARIANT_PRESETS))
def test_every_variant_runs(tiny_model_dir, prompts_file, rewards_file, tmp_path, variant):
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}, {"function": f"{rewards_file}:has_vowel_start", "weight": 0.5}]
    result = posttrain.run(rl_recipe(tiny_model_dir, prompts_file, rewards, tmp_path / "run", variant=variant),
                           show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    for key in STEP_METRICS + ("rewards/vowel_fraction/mean", "rewards/has_vowel_start/pass_rate", "pass_rate"):
        assert key in records[-1], key
    assert all(r["reward"] == pytest.approx(r["rewards/vowel_fraction/mean"] + 0.5 * r["rewards/has_vowel_start/mean"], abs=1e-5)
               for r in records)
    if VARIANT_PRESETS[variant]["kl_coef"] > 0:
        assert records[-1]["kl"] != 0  # the policy moved away from the reference (k1 may be < 0)
    else:
        assert "kl" not in records[-1]  # no reference model is loaded
    summary = result.stage("rl").summary
    assert summary["steps"] == 2 and "first_reward" in summary and "last_reward" in summary
    out = result.stage("rl").output
    trained, start = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = [n for n, p in trained.state_dict().items() if not torch.equal(p, start.state_dict()[n])]
    assert moved, "the saved policy equals the input model: the updates were not saved"
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()


def test_ppo_runs_with_critic_from_policy(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}], tmp_path / "run",
                       kind="ppo", group_size=2, minibatch_size=4, grad_accum=2, kl_target=0.5)
    result = posttrain.run(recipe, show_progress=False)
    records = read_metrics(tmp_path / "run")
    last = records[-1]
    for key in ("loss/value", "value_mean", "value_clip_frac", "grad_norm/critic", "returns/mean", "kl", "kl_coef"):
        assert key in last, key
    assert last["optimizer_steps"] == 2 * (4 * 2 // 4)  # ppo_epochs 2 x (8 completions / minibatch 4)
    assert records[0]["kl_coef"] != records[-1]["kl_coef"]  # adaptive KL moved beta
    assert result.stage("rl").status == "completed"


CURRICULUM = {"variant": "dapo", "dynamic_sampling": False,
              "curriculum": {"sampler": "dump", "skip_settled": True, "pass_reward": 0.4, "settled_memory": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [{"variant": "dapo"}, CURRICULUM], ids=["dapo", "curriculum"])
def test_resume_reproduces_the_uninterrupted_run(tiny_model_dir, prompts_file, rewards_file, tmp_path, monkeypatch,
                                                 stage):
    """Crash after the step-2 checkpoint; the rerun resumes there and matches an uninterrupted run
    (with a curriculum: its draws too, which depend on the windows and memories it checkpointed)."""
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    keys = {"total_steps": 4, "save_steps": 2, **stage}
    if "curriculum" in stage:
        rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
        prompts_file = tmp_path / "sources.jsonl"
        prompts_file.write_text("".join(json.dumps({**r, "source": f"s{i % 3}"}) + "\n" for i, r in enumerate(rows)))
    posttrain.run(rl_recipe(tiny_model_dir, prompts_file, rewards, tmp_path / "full", **keys), show_progress=False)
    full = read_metrics(tmp_path / "full")

    recipe = rl_recipe(tiny_model_dir, prompts_file, rewards, tmp_path / "resumed", **keys)
    run_killed_then_resumed(recipe, 3, monkeypatch)
    resumed = read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6), a["step"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
        for key in (k for k in a if k.startswith("curriculum/")):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["step"], key)
    if "curriculum" in stage:  # the curriculum did steer: its draws moved off uniform
        assert full[-1]["curriculum/p/s0"] != pytest.approx(1 / 3)


def test_dynamic_sampling_drops_all_equal_groups(tiny_model_dir, prompts_file, rewards_file):
    """Even prompts score 1 on every completion (no signal): they are dropped and more prompts drawn."""
    config = GRPOConfig.model_validate({"kind": "grpo", "data": str(prompts_file), "variant": "dapo",
                                        "rewards": [{"function": f"{rewards_file}:even_prompts_constant"}],
                                        "prompts_per_step": 4, "group_size": 4, "max_tokens": 4,
                                        "max_sampling_rounds": 3})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": f"Item {i}:", "answer": "0"} for i in range(32)]
    session = SimpleNamespace(config=config, plan=config.batch_plan(1), procs=Processes(),
                              stream=PromptStream(rows, seed=0), episodes=None,
                              engine=make_engine("hf", str(tiny_model_dir), tokenizer, model=load_policy(str(tiny_model_dir))),
                              scorer=RewardScorer([RewardChannelConfig.model_validate(c) for c in [
                                  {"function": f"{rewards_file}:even_prompts_constant"}]]))
    batch, stats = collect_rollouts(session, step=1, timer=PhaseTimer())
    numbers = [int(row["prompt"].split()[1].rstrip(":")) for row in batch.rows]
    assert len(batch) == 16 and all(n % 2 == 1 for n in numbers)
    drawn = stats["sampling/groups_drawn"]
    evens = sum(int(r["prompt"].split()[1].rstrip(":")) % 2 == 0 for r in PromptStream(rows, seed=0).take(drawn))
    assert stats["sampling/rounds"] == drawn // 4
    assert stats["sampling/groups_dropped"] == evens
    assert drawn - evens >= 4 > drawn - 4 - evens  # it stopped at the first round that filled the batch
    assert stats["sampling/groups_filled"] == 0
    # one round only: the 4 drawn prompts hold ~2 odd ones; the rest of the batch is filled
    session.config = config.model_copy(update={"max_sampling_rounds": 1})
    batch, stats = collect_rollouts(session, step=2, timer=PhaseTimer())
    kept = 4 - stats["sampling/groups_dropped"]
    assert stats["sampling/rounds"] == 1 and stats["sampling/groups_filled"] == 4 - kept and len(batch) == 16
    # the batch now holds every drawn group, so the pre-filter reward is its plain mean
    assert stats["sampling/reward_drawn"] == pytest.approx(float(batch.rewards.mean()), abs=1e-6)


@pytest.fixture
def reward_model_dir(tiny_model_dir, tmp_path):
    """A sequence-classification model (random head) on the tiny backbone, as a reward_model stage writes."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_model_dir).pad_token_id
    out = tmp_path / "rm"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_critic_starts_from_the_reward_model(reward_model_dir):
    from transformers import AutoModelForSequenceClassification

    from posttrain.rl.loop.models import load_critic

    rm = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    critic = load_critic(str(reward_model_dir), pad_token_id=0)
    torch.testing.assert_close(critic.score.weight, rm.score.weight)
    assert critic.score.bias is None
    ids = torch.tensor([[5, 6, 7, 8]])
    # the value at the last position equals the reward model's score of the sequence
    torch.testing.assert_close(critic(input_ids=ids).logits[0, -1, 0], rm(input_ids=ids).logits[0, 0])


def test_ppo_with_reward_model_channel(tiny_model_dir, reward_model_dir, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} plus 1?"}], "answer": str(i + 1)} for i in range(8)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = rl_recipe(tiny_model_dir, data, [{"reward_model": str(reward_model_dir), "weight": 0.5},
                                              {"function": "posttrain.rewards.arithmetic:final_number_matches"}],
                       tmp_path / "run", kind="ppo", critic_model=str(reward_model_dir), group_size=1, ppo_epochs=1)
    posttrain.run(recipe, show_progress=False)
    last = read_metrics(tmp_path / "run")[-1]
    assert last["reward"] == pytest.approx(0.5 * last["rewards/reward_model/mean"]
                                           + last["rewards/final_number_matches/mean"], abs=1e-5)
    assert "rewards/final_number_matches/pass_rate" in last
