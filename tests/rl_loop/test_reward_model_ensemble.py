"""A reward-model ensemble as an RL reward channel, end to end: the rewards the stage logs are the
ensemble's aggregation of its members' scores, each member scored on its own."""
import json

import pytest
import torch
from rl_loop_helpers import read_metrics, rl_recipe
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import posttrain
from posttrain.models.reward import load_reward_model
from posttrain.rl.rewards import RewardModelChannel

STD_COEF = 0.5


@pytest.fixture
def ensemble_dir(tiny_model_dir, tmp_path):
    """Two members on the tiny backbone whose value heads are w and -w, so they score s and -s,
    with ensemble.json asking for mean - 0.5 * std. The head is scaled up so s is O(1)."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    out = tmp_path / "rm"
    with torch.no_grad():
        model.score.weight.mul_(50.0)
        for name, sign in (("member_0", 1.0), ("member_1", -1.0)):
            model.score.weight.mul_(sign)
            model.save_pretrained(out / name)
            tokenizer.save_pretrained(out / name)
            model.score.weight.mul_(sign)
    (out / "ensemble.json").write_text(json.dumps({"members": ["member_0", "member_1"],
                                                   "aggregation": "mean_minus_std", "std_coef": STD_COEF}))
    return out


def test_ensemble_channel_rewards_are_the_members_aggregate(tiny_model_dir, prompts_file, ensemble_dir, tmp_path,
                                                            monkeypatch):
    """Members score s and -s: mean 0, population std |s|, so the channel's score is -0.5 |s|. Were
    only one member used the step means would be mean(s) or mean(-s); a plain mean would be 0."""
    seen = []  # (prompts, completions) of each step's scoring call, recorded around the real method
    score = RewardModelChannel.score

    def recording(self, completions, columns):
        seen.append((list(columns["prompt"]), list(completions)))
        return score(self, completions, columns)

    monkeypatch.setattr(RewardModelChannel, "score", recording)
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"reward_model": str(ensemble_dir), "name": "rm"}],
                       tmp_path / "run", kl_coef=0.0)
    posttrain.run(recipe, show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert len(records) == len(seen) == 2

    member = load_reward_model(ensemble_dir / "member_0")  # one member alone, as a plain reward model
    assert len(member) == 1
    for record, (prompts, completions) in zip(records, seen):
        s = member.score(prompts, completions)  # (16,)
        expected = -STD_COEF * s.abs()
        assert float(s.abs().mean()) > 0.05  # the members disagree, so the aggregation shows
        assert record["rewards/rm/mean"] == pytest.approx(float(expected.mean()), abs=1e-5)
        assert record["rewards/rm/std"] == pytest.approx(float(expected.std(unbiased=False)), abs=1e-5)
        assert record["reward"] == pytest.approx(record["rewards/rm/mean"], abs=1e-6)
        assert abs(record["rewards/rm/mean"] - float(s.mean())) > 1e-3
        assert abs(record["rewards/rm/mean"]) > 1e-3
