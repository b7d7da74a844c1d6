"""Issue-5 acceptance through the CLI: a user's one-function verifier file trains; a verifier that
raises on every input stops the stage with a message naming it (never trains on zeros); noisy-verifier
corrections apply to a pass/fail channel."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from posttrain.cli import main
from posttrain.errors import ConfigError
from posttrain.rl.rewards import RewardChannelConfig, RewardScorer


@dataclass
class FakeRollout:
    completions: list[str]


def _recipe(tmp_path, model, prompts, verifier_ref: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""\
# posttrain run recipe.yaml
name: user-verifier
model: {model}
run_dir: {tmp_path / 'run'}
stages:
  grpo:
    kind: grpo
    data: {prompts}
    rewards: [{{verifier: "{verifier_ref}"}}]
    prompts_per_step: 2
    group_size: 2
    max_tokens: 4
    total_steps: 2
""")
    return str(path)


@pytest.mark.slow
def test_user_verifier_file_trains_and_a_raising_one_stops_the_stage(tmp_path, tiny_model_dir, prompts_file, capsys):
    (tmp_path / "my_verifier.py").write_text(
        "def check(completion, answer):\n    return 1.0 if answer in completion else 0.0\n\n"
        "def broken(completion, answer):\n    raise RuntimeError('parser exploded')\n")
    assert main(["run", _recipe(tmp_path, tiny_model_dir, prompts_file, "./my_verifier.py:check"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2]

    code = main(["run", _recipe(tmp_path, tiny_model_dir, prompts_file, "./my_verifier.py:broken"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "broken" in err and "RuntimeError" in err and "parser exploded" in err
    record = json.loads((tmp_path / "run" / "grpo" / "stage.json").read_text())
    assert record["status"] == "completed"  # the earlier good output is untouched


def _pass_fail_scorer(tmp_path, **noise):
    module = tmp_path / "r.py"
    module.write_text("def right(completions, answer):\n    return [float(c == a) for c, a in zip(completions, answer)]\n")
    return RewardScorer([RewardChannelConfig(function=f"{module}:right", **noise)])


def test_backward_correction_on_a_pass_fail_channel(tmp_path):
    """fp=0.1, fn=0.2: pass -> (1-0.1)/(1-0.3) = 9/7; fail -> (0-0.1)/0.7 = -1/7."""
    scorer = _pass_fail_scorer(tmp_path, noise_correction="backward", fp_rate=0.1, fn_rate=0.2)
    scored = scorer.score(FakeRollout(["1", "2"]), [{"prompt": "p", "answer": "1"}] * 2, group_size=2)
    torch.testing.assert_close(scored.rewards, torch.tensor([9 / 7, -1 / 7]), atol=1e-6, rtol=0)
    assert scored.channel_passed["right"].tolist() == [True, False]  # pass rate stays the raw verdict


def test_forward_correction_rates_from_a_verify_report(tmp_path):
    """fn=0.25 read from the report: pass -> fn = 0.25; fail -> fn - 1 = -0.75."""
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"fp_rate": 0.05, "fn_rate": 0.25}))
    scorer = _pass_fail_scorer(tmp_path, noise_correction="forward", rates_from=str(report))
    scored = scorer.score(FakeRollout(["1", "2"]), [{"prompt": "p", "answer": "1"}] * 2, group_size=2)
    torch.testing.assert_close(scored.rewards, torch.tensor([0.25, -0.75]), atol=1e-6, rtol=0)


def test_noise_correction_config_errors(tmp_path):
    with pytest.raises(ValueError, match="needs fn_rate and fp_rate, or rates_from"):
        RewardChannelConfig(verifier="math", noise_correction="backward", fn_rate=0.1)
    with pytest.raises(ConfigError, match=r"fp_rate=0.6 \+ fn_rate=0.5 = 1.1 must be < 1"):
        _pass_fail_scorer(tmp_path, noise_correction="backward", fp_rate=0.6, fn_rate=0.5)
