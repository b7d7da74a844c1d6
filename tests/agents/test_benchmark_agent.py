"""benchmarks/agent.py: both sides read the agent recipe's settings, TRL parses the calls that
posttrain's chat template writes, and TRL's reward function scores the last assistant message."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from posttrain.agents.calculator import calculator
from posttrain.models import init_model, load_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "agent.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_agent", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPT.parent))


def test_settings_come_from_the_recipe(bench):
    stages = bench.recipe_stages()
    grpo, evaluation = stages["grpo"], stages["eval_grpo"]
    assert grpo["environment"]["tools"] == ["calculator"] and grpo["environment"]["max_turns"] == 3
    assert Path(grpo["data"]).is_file() and Path(evaluation["data"]).is_file()
    assert "kind" not in grpo and "model" not in grpo and evaluation["environment"] == grpo["environment"]


def test_trl_reward_scores_the_last_assistant_message(bench):
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "557*80"}}}]}
    episodes = [[call, {"role": "tool", "name": "calculator", "content": "44560"},
                 {"role": "assistant", "content": "44560"}],
                [{"role": "assistant", "content": "12"}],
                [call]]  # ended on its call (the tool-call limit): no answer
    assert bench.final_answer_reward(episodes, answer=["44560", "13", "44560"]) == [1.0, 0.0, 0.0]


def test_trl_parses_the_calls_our_template_writes(tmp_path):
    from trl.chat_template_utils import (
        is_chat_template_prefix_preserving,
        parse_response,
        qwen3_template,
        supports_tool_calling,
    )

    tokenizer = load_tokenizer(init_model(tmp_path / "tiny", arch="qwen2", size="tiny", seed=0))
    tokenizer.response_template = qwen3_template  # what the benchmark sets
    assert supports_tool_calling(tokenizer) and is_chat_template_prefix_preserving(tokenizer)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 557 times 80?"}], tools=[calculator],
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
    text = '<tool_call>{"name": "calculator", "arguments": {"expression": "557*80"}}</tool_call><|im_end|>'
    parsed = parse_response(tokenizer, tokenizer(text)["input_ids"], prefix=prompt, tools=[calculator])
    assert parsed["tool_calls"] == [{"type": "function", "function": {"name": "calculator",
                                                                      "arguments": {"expression": "557*80"}}}]
