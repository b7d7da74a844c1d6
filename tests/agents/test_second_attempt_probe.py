"""scripts/second_attempt_probe.py: second attempts of several models on the same wrong first answers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from repo_scripts import load_script

from posttrain.agents.scripted import ScriptedTurns
from posttrain.models import init_model


@pytest.fixture(scope="module")
def probe():
    return load_script("scripts/second_attempt_probe.py")


def test_models_answer_the_same_wrong_first_answers(probe, tmp_path, monkeypatch, capsys):
    """Model A answers "41" first (wrong: 40 + 2 = 42) and "41" again; model B answers the same
    context "42". Scripted engines stand in for the models: the probe builds the context with the
    feedback environment's own message and counts B's gain over A on it."""
    first = init_model(tmp_path / "a", arch="qwen2", size="tiny", seed=0)
    second = init_model(tmp_path / "b", arch="qwen2", size="tiny", seed=0)
    seen = []

    def engine(kind, model, tokenizer, **options):
        seen.append(Path(model).name)
        return ScriptedTurns(tokenizer, ["41", "42" if Path(model) == second else "41"])

    monkeypatch.setattr("posttrain.rl.rollout.make_engine", engine)
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": [{"role": "user", "content": "What is 40 plus 2?"}], "answer": "42"}) + "\n")
    out = tmp_path / "probe.json"
    assert probe.main([str(first), str(second), "--data", str(data), "--samples", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["contexts"] == 1 and report["questions"] == 1  # the two samples were the same wrong answer
    assert report["models"][str(first)] == {"accuracy": 0.0, "right": 0, "right_only_here": 0,
                                            "right_only_with_first": 0}
    assert report["models"][str(second)] == {"accuracy": 1.0, "right": 1, "right_only_here": 1,
                                             "right_only_with_first": 0}
    assert seen == ["a", "a", "b"]  # A samples the first answers, then every model answers the contexts
    contexts = probe.wrong_first_answers(str(first), [json.loads(data.read_text())], 1, 0.6, 0, 16)
    [(_, wrong, messages)] = contexts
    assert wrong == "41" and messages[1:] == [{"role": "assistant", "content": "41"},
                                              {"role": "user", "content": "41 is not correct. Try again."}]
