"""The eval stage's episodes: the verifier scores the final turn, turns and tool calls are
reported per episode and per value of the breakdown column, transcripts land in samples.jsonl."""
from __future__ import annotations

import json

import pytest
from agent_helpers import ScriptedEngine

from posttrain.agents.config import EnvironmentConfig
from posttrain.agents.session import build_episode_runner
from posttrain.evaluation.runner import evaluate_model
from posttrain.models import init_model, load_tokenizer
from posttrain.verification import VerifierPool, load_verifier

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "719*76"}}</tool_call>'


def test_episode_eval_with_breakdown(tmp_path):
    tokenizer = load_tokenizer(init_model(tmp_path / "tiny", arch="qwen2", size="tiny", seed=0))
    runner = build_episode_runner(EnvironmentConfig(name="tools", tools=["calculator"], max_turns=3,
                                                    max_episode_tokens=200), tokenizer, max_tokens=64)
    prompts = ["What is 3 plus 4?", "What is 719 times 76?", "What is 719 times 76?", "What is 1 plus 1?"]
    columns = {"answer": ["7", "54644", "54644", "2"], "difficulty": ["easy", "hard", "hard", "easy"]}
    # easy: right directly, wrong directly; hard: through the calculator (right), a wrong guess
    engine = ScriptedEngine(tokenizer, [["7", CALL, "50000", "3"], ["54644"]])
    with VerifierPool(load_verifier("math", extract="last_number"), timeout_s=10, workers=1, executor="thread") as pool:
        summary = evaluate_model(engine, pool, prompts, columns, greedy=True, samples=0,
                                 samples_path=tmp_path / "samples.jsonl", episodes=runner, breakdown="difficulty")
    runner.close()
    assert summary["eval/accuracy"] == 0.5
    assert (summary["eval/accuracy/easy"], summary["eval/accuracy/hard"]) == (0.5, 0.5)
    assert (summary["eval/tool_calls/easy"], summary["eval/tool_calls/hard"]) == (0.0, 0.5)
    assert summary["eval/turns"] == pytest.approx(5 / 4) and summary["eval/turns/hard"] == 1.5
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, True, False, False]
    assert rows[1]["turns"] == 2 and rows[1]["tool_calls"] == 1.0
    assert [m["role"] for m in rows[1]["transcript"]] == ["user", "assistant", "tool", "assistant"]
    assert rows[1]["transcript"][2]["content"] == "54644" and rows[1]["completion"] == "54644"


def test_feedback_eval_reports_each_attempts_accuracy(tmp_path):
    tokenizer = load_tokenizer(init_model(tmp_path / "tiny", arch="qwen2", size="tiny", seed=0))
    runner = build_episode_runner(EnvironmentConfig(name="feedback", options={"extract": "last_number"}, max_turns=2,
                                                    max_episode_tokens=200), tokenizer, max_tokens=16)
    prompts = ["What is 3 plus 4?", "What is 5 plus 5?", "What is 1 plus 1?", "What is 2 plus 2?"]
    columns = {"answer": ["7", "10", "2", "4"]}
    # right at once; wrong then right; wrong twice (the same answer again); wrong then right
    engine = ScriptedEngine(tokenizer, [["7", "11", "3", "5"], ["10", "3", "4"]])
    with VerifierPool(load_verifier("math", extract="last_number"), timeout_s=10, workers=1, executor="thread") as pool:
        summary = evaluate_model(engine, pool, prompts, columns, greedy=True, samples=0, episodes=runner,
                                 samples_path=tmp_path / "samples.jsonl")
    runner.close()
    assert summary["eval/accuracy"] == 0.75
    assert summary["eval/attempt_1_accuracy"] == 0.25 and summary["eval/attempt_2_accuracy"] == pytest.approx(2 / 3)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["info"].get("repeats") for r in rows] == [None, 0.0, 1.0, 0.0]  # "3" again after "3 is not correct"
