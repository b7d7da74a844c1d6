"""An environment written for TRL's GRPOTrainer(environment_factory=...) runs unchanged through
the `trl` built-in: its public methods are the tools, reset(**row) extends the prompt, get_reward()
scores the finished episode, one instance per episode."""
from __future__ import annotations

import pytest
from agent_helpers import ScriptedEngine

from posttrain.agents.config import EnvironmentConfig
from posttrain.agents.session import build_episode_runner, environment_problems
from posttrain.models import init_model, load_tokenizer
from posttrain.rl.rollout import SamplingConfig

# Written as TRL 1.16's GRPOTrainer docstring describes environment_factory (no posttrain import).
TRL_ENV = '''
class CounterEnv:
    def __init__(self):
        self.counter = 0
        self.target = None

    def reset(self, **kwargs) -> str | None:
        self.counter = 0
        self.target = int(kwargs["answer"])
        return " Use the counter."

    def increment(self, step: int) -> int:
        """Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """
        self.counter += step
        return self.counter

    def get_reward(self) -> float:
        return float(self.counter == self.target)

    def _helper(self):
        return "not a tool"


class NoReset:
    def add(self, x: int) -> int:
        """Add.

        Args:
            x: A number.
        """
        return x
'''


def call(step: int) -> str:
    return f'<tool_call>{{"name": "increment", "arguments": {{"step": {step}}}}}</tool_call>'


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "trl_env.py"
    path.write_text(TRL_ENV)
    return path


def test_a_trl_environment_runs_unchanged(env_file, tmp_path):
    tokenizer = load_tokenizer(init_model(tmp_path / "tiny", arch="qwen2", size="tiny", seed=0))
    config = EnvironmentConfig(name="trl", options={"factory": f"{env_file}:CounterEnv"}, max_turns=4,
                               max_episode_tokens=512)
    runner = build_episode_runner(config, tokenizer, max_tokens=64)
    rows = [{"prompt": "Count to 7.", "answer": "7"}, {"prompt": "Count to 5.", "answer": "5"}]
    engine = ScriptedEngine(tokenizer, [[call(3), call(5)], [call(4), "done"], ["done"]])
    batch = runner.run(engine, rows, SamplingConfig(n=1, max_tokens=64))
    first, second = batch.episodes
    assert first["messages"][0] == {"role": "user", "content": "Count to 7. Use the counter."}
    assert [m["content"] for m in first["messages"] if m["role"] == "tool"] == ["3", "7"]
    assert [m["content"] for m in second["messages"] if m["role"] == "tool"] == ["5"]  # its own instance
    assert batch.env_rewards == [1.0, 1.0] and first["turns"] == 3 and second["turns"] == 2
    assert first["info"]["tool_calls/increment"] == 2.0
    prompt = tokenizer.decode(batch.prompt_ids[0])
    assert "increment(step): Increment the internal counter." in prompt and "_helper" not in prompt
    assert "get_reward" not in prompt and "reset" not in prompt
    runner.close()


def test_a_trl_class_without_reset_is_a_preflight_problem(env_file):
    config = EnvironmentConfig(name="trl", options={"factory": f"{env_file}:NoReset"})
    problems = environment_problems(config, "stages.g.environment", ["prompt"], "data")
    assert len(problems) == 1 and "without a reset(**row) method" in problems[0]
    assert problems[0].startswith("stages.g.environment.options: environment 'trl'")
