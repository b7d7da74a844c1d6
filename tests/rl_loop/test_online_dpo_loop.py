"""The online_dpo stage in the loop: which completions pair up, the loss against the reference, the
iterative reference refresh (and its checkpoint), ties, learning, two processes, bad keys."""
import json
import math

import pytest
from pydantic import ValidationError
from rl_loop_helpers import read_metrics, rl_recipe, run_killed_then_resumed

import posttrain
from posttrain.errors import VerifierError
from posttrain.stages.online_dpo import OnlineDPOConfig


def _recipe(model, data, rewards_file, run_dir, reward="vowel_fraction", **keys):
    return rl_recipe(model, data, [{"function": f"{rewards_file}:{reward}"}], run_dir, kind="online_dpo", **keys)


def test_pairs_are_each_groups_best_and_worst(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """4 prompts x 4 completions: the trained rows of a group are its first best (advantage +1) and
    last worst (-1) completion, or none on a tie. Step 1's policy IS the reference, so every
    implicit reward is 0 and the sigmoid loss is log 2 exactly."""
    run = tmp_path / "run"
    posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, run, save_rollouts=True, total_steps=2),
                  show_progress=False)
    metrics = read_metrics(run)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics[0]["reward_margin"] == 0.0 and metrics[0]["reward_chosen"] == 0.0
    assert metrics[1]["reward_margin"] != 0.0  # step 2: the policy moved, the reference did not
    for step, record in enumerate(metrics, start=1):
        rows = [json.loads(line) for line in (run / "rl" / "rollouts" / f"step-{step:06d}.rank0.jsonl").read_text().splitlines()]
        pairs = 0
        for group in range(4):
            members = [r for r in rows if r["group"] == group]
            rewards = [r["reward"] for r in members]
            best = rewards.index(max(rewards))
            worst = len(rewards) - 1 - rewards[::-1].index(min(rewards))
            trained = {i for i, r in enumerate(members) if r["trained"]}
            if max(rewards) > min(rewards):
                pairs += 1
                assert trained == {best, worst}
                assert (members[best]["advantage"], members[worst]["advantage"]) == (1.0, -1.0)
            else:
                assert trained == set()
        assert record["pairs/pairs"] == pairs > 0
        assert record["optimizer_steps"] == 1


def test_rpo_term_adds_the_chosen_answers_nll(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """sft_weight 0.5: step 1's loss is log 2 (h = 0) plus 0.5 x the logged NLL of the chosen tokens."""
    run = tmp_path / "run"
    posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, run, total_steps=1, sft_weight=0.5),
                  show_progress=False)
    (first,) = read_metrics(run)
    assert first["loss/nll"] > 0.5  # a random tiny model: several nats per token
    assert first["loss"] == pytest.approx(math.log(2) + 0.5 * first["loss/nll"], abs=1e-5)
    assert first["loss/pairs"] == pytest.approx(math.log(2), abs=1e-6)


def test_iterative_reference_is_the_policy_of_the_last_iteration(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """ref_update_steps 2: after step 2 the reference becomes the policy, so step 3 starts with
    implicit rewards 0 again; with a fixed reference step 3's are not 0."""
    runs = {}
    for every in (0, 2):
        run = tmp_path / f"every{every}"
        posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, run, total_steps=3, ref_update_steps=every),
                      show_progress=False)
        runs[every] = read_metrics(run)
    assert runs[2][1]["reference_refreshed"] == 1.0 and "reference_refreshed" not in runs[2][0]
    assert runs[2][2]["reward_chosen"] == 0.0 and runs[2][2]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert runs[0][2]["reward_chosen"] != 0.0
    assert runs[0][1]["loss"] == runs[2][1]["loss"]  # the same run up to the refresh


def test_resume_restores_the_refreshed_reference(tiny_model_dir, prompts_file, rewards_file, tmp_path, monkeypatch):
    """The step-3 checkpoint holds the reference refreshed at step 2 (not the input model): a run
    killed at step 4 resumes to the uninterrupted run's step 4."""
    keys = {"total_steps": 4, "save_steps": 3, "ref_update_steps": 2}
    posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path / "full", **keys), show_progress=False)
    run_killed_then_resumed(_recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path / "resumed", **keys), 4,
                            monkeypatch)
    full, resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in ("reward", "loss", "reward_chosen", "reward_margin"):
        assert resumed[3][key] == pytest.approx(full[3][key], abs=1e-6), key
    assert full[3]["reward_chosen"] != 0.0


def test_a_judge_that_only_ties_stops_the_stage(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """A constant reward never ranks: after tie_patience steps without a pair the stage stops,
    naming the reward channel and an example group, having taken no optimizer step."""
    run = tmp_path / "run"
    with pytest.raises(VerifierError, match=r"rewards \(constant\): the judge ranked every group .* 2 steps .* \[1.0, 1.0, 1.0, 1.0\]"):
        posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, run, reward="constant", total_steps=4,
                              tie_patience=2), show_progress=False)
    (work,) = (run / ".work").iterdir()  # a failed stage's folder stays for inspection
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["optimizer_steps"] for r in metrics] == [0]  # step 1 logged, step 2 raised
    assert metrics[0]["optimizer_steps_skipped"] == 1


@pytest.mark.slow
def test_online_dpo_learns(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """The vowel share (~0.37 at initialisation) rises as under GRPO (measured: 0.38 -> 0.55 over
    16 steps at lr 1e-2; the bar is +0.1)."""
    run = tmp_path / "run"
    posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, run, prompts_per_step=8, group_size=8,
                          max_tokens=8, lr=1e-2, total_steps=16), show_progress=False)
    curve = [r["reward"] for r in read_metrics(run)]
    first, last = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
    assert last > first + 0.1, curve


@pytest.mark.slow
def test_two_processes_with_unequal_pair_counts(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """Even prompts tie (all completions score 1): the processes hold different numbers of pairs
    (sometimes none), yet take the same optimizer steps and end with equal replicas."""
    run = tmp_path / "run"
    result = posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, run, reward="even_prompts_constant",
                                   total_steps=3, minibatch_size=4, grad_accum=2,
                                   distributed={"processes": 2}), show_progress=False)
    summary = result.stage("rl").summary
    assert summary["distributed/processes"] == 2 and isinstance(summary["distributed/replica_checksum"], float)
    metrics = read_metrics(run)
    assert [r["optimizer_steps"] + r["optimizer_steps_skipped"] for r in metrics] == [2, 2, 2]
    # a process without pairs in a minibatch logs a zero share, so the average stays the global loss
    assert all(r["loss/pairs"] == pytest.approx(r["loss"], abs=1e-6) for r in metrics)


JUDGES = '''
def longer(first, second):
    """Prefers the longer answer; 0.5 on equal lengths."""
    return [0.5 if len(a) == len(b) else float(len(a) > len(b)) for a, b in zip(first, second)]


def reads_columns(first, second, prompt, answer):
    assert len(prompt) == len(answer) == len(first)
    return [0.5] * len(first)


def broken(first, second):
    raise RuntimeError("judge offline")


def out_of_range(first, second):
    return [2.0] * len(first)
'''


def test_pairwise_judge_ranks_by_win_rate(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """A judge that prefers the longer answer: in every group the chosen (trained, advantage +1)
    answer is a longest one and the rejected one a shortest, whatever the vowel reward says."""
    judges = tmp_path / "judges.py"
    judges.write_text(JUDGES)
    run = tmp_path / "run"
    posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, run, save_rollouts=True, total_steps=1,
                          judge=f"{judges}:longer"), show_progress=False)
    rows = [json.loads(line) for line in (run / "rl" / "rollouts" / "step-000001.rank0.jsonl").read_text().splitlines()]
    for group in range(4):
        members = [r for r in rows if r["group"] == group]
        lengths = [len(r["completion"]) for r in members]
        chosen = [len(r["completion"]) for r in members if r["advantage"] == 1.0]
        rejected = [len(r["completion"]) for r in members if r["advantage"] == -1.0]
        if max(lengths) > min(lengths):
            assert chosen == [max(lengths)] and rejected == [min(lengths)]
        else:
            assert chosen == rejected == []


@pytest.mark.parametrize("judge, message", [
    ("reads_columns", "judge '.*reads_columns': the judge ranked every group of the last 1 steps as a tie"),
    ("broken", "judge '.*broken' raised RuntimeError: judge offline \\(example pair: first"),
    ("out_of_range", "expected 24 probabilities in \\[0, 1\\]"),
])
def test_a_judge_that_fails_or_cannot_rank_stops_the_stage(tiny_model_dir, prompts_file, rewards_file, tmp_path,
                                                          judge, message):
    """A judge that reads data columns by name but never prefers (ties), one that raises, one that
    returns values outside [0, 1]: the stage stops naming the judge (24 pairs: 4 groups x 6)."""
    judges = tmp_path / "judges.py"
    judges.write_text(JUDGES)
    with pytest.raises(VerifierError, match=message):
        posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path / "run", total_steps=2,
                              tie_patience=1, judge=f"{judges}:{judge}"), show_progress=False)


def test_a_judge_that_does_not_load_is_found_before_anything_runs(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    from posttrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"stages.rl.judge: judge .*no_such.py"):
        posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path / "run",
                              judge=f"{tmp_path}/no_such.py:fn"), show_progress=False)


BASE = {"kind": "online_dpo", "model": "m", "data": "d.jsonl", "rewards": [{"verifier": "math"}]}


@pytest.mark.parametrize("keys, message", [
    ({"group_size": 1}, "group_size"),
    ({"clip_ratio_low": 0.3, "kl_coef": 0.1}, "online_dpo does not read clip_ratio_low, kl_coef"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing applies to loss_type sigmoid"),
    ({"ref_update_steps": 2, "lora": {"r": 4}}, "ref_update_steps with lora is not built"),
    ({"ref_update_steps": 2, "lora": {"r": 4}, "ref_model": "other"}, "ref_update_steps with lora is not built"),
    ({"ref_update_steps": 2, "distributed": {"zero": 3}}, "ref_update_steps under distributed.zero 3"),
    ({"pairing": "best_of_n"}, "pairing"),
    ({"pair_margin": -1}, "pair_margin"),
])
def test_bad_keys_are_refused(keys, message):
    with pytest.raises(ValidationError, match=message):
        OnlineDPOConfig.model_validate({**BASE, **keys})


def test_defaults_round_trip():
    config = OnlineDPOConfig.model_validate(BASE)
    again = OnlineDPOConfig.model_validate(config.model_dump())
    assert (again.group_size, again.beta, again.pairing, again.needs_reference) == (4, 0.1, "best_worst", True)
