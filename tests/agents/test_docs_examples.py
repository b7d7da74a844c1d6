"""The tool and the environment that docs/agents.md shows are the ones these tests load and play."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from agent_helpers import ScriptedEngine

from posttrain.agents import ToolRunner, load_environment, load_tools
from posttrain.agents.episodes import EpisodeLimits, EpisodeRunner
from posttrain.models import init_model, load_tokenizer
from posttrain.rl.rollout import SamplingConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "agents.md"


def example(name: str, tmp_path: Path) -> Path:
    """The ```python block of docs/agents.md whose first line is ``# NAME``, written to tmp_path."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    code = next(b for b in blocks if b.startswith(f"# {name}\n"))
    path = tmp_path / name
    path.write_text(code)
    return path


def test_the_documented_tool(tmp_path):
    path = example("my_tools.py", tmp_path)
    tools = load_tools([f"{path}:lookup_population"])
    assert tools[0].required == ["city"]
    with ToolRunner(tools) as runner:
        ok, unknown = runner.call_many([("lookup_population", {"city": "Lyon"}),
                                        ("lookup_population", {"city": "Paris"})])
    assert ok.content == "522000"
    assert (unknown.status, unknown.content) == ("rejected", "Error: lookup_population: no city 'Paris'; known: lyon, nice")


def test_the_documented_environment(tmp_path):
    cls = load_environment(f"{example('my_env.py', tmp_path)}:Guess")
    tokenizer = load_tokenizer(init_model(tmp_path / "tiny", arch="qwen2", size="tiny", seed=0))
    runner = EpisodeRunner(cls, "guess", tokenizer, EpisodeLimits(max_turns=5, max_tokens_per_turn=16,
                                                                  max_episode_tokens=200))
    engine = ScriptedEngine(tokenizer, [["50", "hmm"], ["20", "7"], ["7"]])
    batch = runner.run(engine, [{"prompt": "Guess my number", "answer": "7"}] * 2, SamplingConfig(n=1, max_tokens=16))
    first, second = batch.episodes
    assert [m["content"] for m in first["messages"] if m["role"] == "user"][1:] == ["50 is wrong, go lower.",
                                                                                    "20 is wrong, go lower."]
    assert first["reward"] == pytest.approx(0.8) and first["info"]["solved"] == 1.0 and first["turns"] == 3
    assert second["messages"][2] == {"role": "user", "content": "Answer with a number."}
    assert second["turns"] == 2 and second["info"] == {"solved": 1.0}  # "hmm" earned no reward, "7" solved it
    assert second["reward"] == pytest.approx(1.0)


def test_the_documented_openai_agent(tmp_path):
    from posttrain.agents.openai_agent import OpenAIAgentEnvironment

    ref = f"{example('my_agent.py', tmp_path)}:solve"
    tokenizer = load_tokenizer(init_model(tmp_path / "tiny", arch="qwen2", size="tiny", seed=0))
    runner = EpisodeRunner(lambda: OpenAIAgentEnvironment(ref), "openai_agent", tokenizer,
                           EpisodeLimits(max_turns=4, max_tokens_per_turn=16, max_episode_tokens=200))
    engine = ScriptedEngine(tokenizer, [["5", "4"], ["4", "5"]])
    batch = runner.run(engine, [{"prompt": "What is 2+2?", "answer": "4"}] * 2, SamplingConfig(n=1, max_tokens=16))
    assert batch.env_rewards == [1.0, 0.0] and [e["turns"] for e in batch.episodes] == [2, 2]
    assert batch.episodes[0]["messages"][2] == {"role": "user",
                                                "content": "Check your work, then give the final answer."}
    runner.close()
