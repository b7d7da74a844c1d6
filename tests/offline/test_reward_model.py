"""reward_model stage: ensembles on disk, the scorer's aggregations, margins, and learning on arithmetic pairs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import posttrain
from posttrain.errors import DataError


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, tiny_model, small_preference_data):
    """A 3-member bootstrapped ensemble, 6 steps per member."""
    return posttrain.run_stage("reward_model", model=str(tiny_model), data=small_preference_data, ensemble=3,
                               bootstrap=True, aggregation="mean_minus_std", std_coef=0.5, max_steps=6,
                               batch_size=8, lr=1e-3, logging_steps=2, run_dir=tmp_path_factory.mktemp("rm-ens"))


def _member_rewards(member_dir, prompts, completions):
    """Score with the plain transformers API, independently of RewardScorer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(member_dir)
    model = AutoModelForSequenceClassification.from_pretrained(member_dir).eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    out = []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions):
            ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
            out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return torch.tensor(out)


def test_ensemble_layout_and_aggregations(ensemble_run, preference_data):
    from posttrain.models.reward import load_reward_model

    model_dir = ensemble_run.output
    spec = json.loads((model_dir / "ensemble.json").read_text())
    assert spec == {"members": ["member_0", "member_1", "member_2"], "aggregation": "mean_minus_std",
                    "std_coef": 0.5, "seeds": [0, 1, 2], "bootstrap": True}
    assert not (model_dir.parent / "members").exists()  # per-member scratch folders are cleaned up
    assert ensemble_run.metrics["members"] == 3 and ensemble_run.metrics["steps"] == 18

    rows = [json.loads(line) for line in Path(preference_data["eval_path"]).read_text().splitlines()[:5]]
    prompts = [r["prompt"] for r in rows]
    completions = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    prompts = prompts + prompts
    expected = torch.stack([_member_rewards(model_dir / m, prompts, completions) for m in spec["members"]])  # (3, 10)
    assert not torch.allclose(expected[0], expected[1])  # members differ (seed, head init, resample)

    scorer = load_reward_model(model_dir)
    assert len(scorer) == 3 and scorer.aggregation == "mean_minus_std" and scorer.std_coef == 0.5
    torch.testing.assert_close(scorer.member_scores(prompts, completions), expected, rtol=0, atol=1e-5)
    mean, std = expected.mean(0), ((expected - expected.mean(0)) ** 2).mean(0).sqrt()
    torch.testing.assert_close(scorer.score(prompts, completions, "mean"), mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(scorer.score(prompts, completions, "min"), expected.min(0).values, rtol=0, atol=1e-5)
    torch.testing.assert_close(scorer.score(prompts, completions), mean - 0.5 * std, rtol=0, atol=1e-5)
    torch.testing.assert_close(scorer.score(prompts, completions, "mean_minus_std", std_coef=2.0), mean - 2 * std,
                               rtol=0, atol=1e-5)

    single = load_reward_model(model_dir / "member_1")  # one model folder = an ensemble of one
    torch.testing.assert_close(single.score(prompts, completions, "mean_minus_std"), expected[1], rtol=0, atol=1e-5)


def test_ensemble_metrics_carry_member_and_increasing_steps(ensemble_run):
    records = [json.loads(line) for line in (ensemble_run.output.parent / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["member"] for r in train] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert "pairwise_accuracy" in train[0]


def test_single_reward_model_loads_as_sequence_classifier(tmp_path, tiny_model, small_preference_data):
    from transformers import AutoModelForSequenceClassification

    result = posttrain.run_stage("reward_model", model=str(tiny_model), data=small_preference_data, max_steps=3,
                                 batch_size=4, run_dir=tmp_path, center_rewards_coefficient=0.01)
    model = AutoModelForSequenceClassification.from_pretrained(result.output)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    assert not (result.output / "ensemble.json").exists()
    assert 0.0 <= result.metrics["eval_pairwise_accuracy"] <= 1.0


def test_margin_column_must_be_numeric(tmp_path, tiny_model):
    rows = [{"prompt": "What is 1 plus 1?", "chosen": "2", "rejected": "3", "margin": "big"}] * 4
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="margin"):
        posttrain.run_stage("reward_model", model=str(tiny_model), data=str(path), max_steps=1, run_dir=tmp_path / "run")


def test_margin_enters_the_loss(tmp_path, tiny_model):
    """Same pairs and seed: a margin of 3 inside -log sigmoid(r_c - r_r - m) raises the first loss from ~log 2."""
    rows = [{"prompt": f"What is {i} plus 1?", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(16)]
    plain, margin = tmp_path / "plain.jsonl", tmp_path / "margin.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    margin.write_text("".join(json.dumps({**r, "margin": 3.0}) + "\n" for r in rows))
    common = {"model": str(tiny_model), "max_steps": 1, "batch_size": 16, "logging_steps": 1}
    without = posttrain.run_stage("reward_model", data=str(plain), run_dir=tmp_path / "a", **common).metrics
    with_m = posttrain.run_stage("reward_model", data=str(margin), run_dir=tmp_path / "b", **common).metrics
    ignored = posttrain.run_stage("reward_model", data=str(margin), use_margin=False, run_dir=tmp_path / "c", **common).metrics
    # -log sigmoid(d - 3) with d ~ 0 (fresh head) is log(1 + e^3) = 3.0486
    assert without["first_loss"] == pytest.approx(0.6931, abs=0.02)
    assert with_m["first_loss"] == pytest.approx(3.0486, abs=0.05)
    assert ignored["first_loss"] == pytest.approx(without["first_loss"], abs=1e-6)


@pytest.mark.slow
def test_reward_model_learns_arithmetic_preferences(tmp_path, arithmetic_sft_model, preference_data):
    """From the briefly SFT'd tiny model, 1500 steps reach eval pairwise accuracy clearly above chance."""
    result = posttrain.run_stage("reward_model", model=str(arithmetic_sft_model), data=preference_data,
                                 max_steps=1500, batch_size=32, lr=3e-4, lr_scheduler="constant", max_length=64,
                                 logging_steps=100, seed=0, run_dir=tmp_path)
    print("reward model summary:", result.metrics)
    assert result.metrics["eval_pairwise_accuracy"] >= 0.6
