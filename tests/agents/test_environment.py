"""The environment contract's errors (before anything trains, exit 2, naming the key) and a grpo
stage trained on multi-turn episodes through the public recipe API."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import posttrain
from posttrain.agents import load_environment
from posttrain.agents.config import EnvironmentConfig
from posttrain.agents.session import environment_factory, environment_problems
from posttrain.errors import ConfigError

ENV_FILE = '''
from posttrain.agents import Environment, StepResult


class Chatty(Environment):
    """Two more user turns after the first answer; pays 0.5 per turn that contains a vowel."""

    columns = ("prompt",)

    def __init__(self, turns: int = 3):
        super().__init__(turns=turns)
        self.turns = turns
        self.seen = 0

    def reset(self, row):
        return row["prompt"]

    def step(self, text):
        self.seen += 1
        reward = 0.5 * any(c in "aeiou" for c in text)
        return StepResult(messages=[{"role": "user", "content": "And?"}], reward=reward,
                          done=self.seen >= self.turns, info={"vowel_turns": float(reward > 0)})


class NoStep:
    def reset(self, row):
        return row["prompt"]


needs_answer = type("NeedsAnswer", (Chatty,), {"columns": ("prompt", "answer")})
not_a_class = 3
'''


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "my_env.py"
    path.write_text(ENV_FILE)
    return path


@pytest.mark.parametrize(("name", "says"), [
    ("gym", "unknown environment 'gym'; expected a built-in (feedback, openai_agent, tools, trl)"),
    ("{}:NoStep", "has no step(text) method"),
    ("{}:not_a_class", "is a int; expected a class"),
    ("{}:Missing", "has no attribute 'Missing'"),
])
def test_contract_errors_name_the_key(env_file, name, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")) as info:
        load_environment(name.format(env_file), key="stages.grpo.environment.name")
    assert str(info.value).startswith("stages.grpo.environment.name:")


def test_options_the_environment_refuses(env_file):
    config = EnvironmentConfig(name=f"{env_file}:Chatty", options={"turn": 2})
    with pytest.raises(ConfigError, match=r"stages.g.environment.options: .* does not take \['turn'\]"):
        environment_factory(config, "stages.g.environment")
    _, make = environment_factory(EnvironmentConfig(name=f"{env_file}:Chatty", options={"turns": 2}))
    assert make() is not make() and make().turns == 2  # one instance per episode


def test_preflight_problems(env_file):
    config = EnvironmentConfig(name=f"{env_file}:needs_answer", tools=["abacus"], parser="xml")
    problems = environment_problems(config, "stages.g.environment", ["prompt"], "data file d.jsonl")
    assert len(problems) == 3
    assert "reads columns ['answer'], which data file d.jsonl lacks (it has prompt)" in problems[0]
    assert problems[1].startswith("stages.g.environment.tools[0]: unknown tool 'abacus'")
    assert problems[2].startswith("stages.g.environment.parser: unknown tool-call parser 'xml'")


def test_preflight_checks_the_columns_an_environments_options_add():
    config = EnvironmentConfig(name="feedback", options={"first_attempt_column": "first_attempt"})
    [problem] = environment_problems(config, "stages.g.environment", ["prompt", "answer"], "data file d.jsonl")
    assert "environment 'feedback' reads columns ['first_attempt'], which data file d.jsonl lacks" in problem
    assert environment_problems(config, "k", ["prompt", "answer", "first_attempt"], "d") == []


@pytest.mark.parametrize("module", ["environment", "tools", "toolcalls", "calculator", "config"])
def test_docstring_examples(module):
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(f"posttrain.agents.{module}")).failed == 0


def _recipe(tmp_path, model, data, environment: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: agents
        model: {model}
        run_dir: {tmp_path / 'run'}
        stages:
          grpo:
            kind: grpo
            data: {data}
            rewards: [{{verifier: exact}}]
            prompts_per_step: 4
            group_size: 2
            max_tokens: 6
            total_steps: 2
            environment: {environment}
        """))
    return str(path)


@pytest.mark.parametrize(("environment", "says"), [
    ("{name: tools, tools: [abacus]}", "stages.grpo.environment.tools[0]: unknown tool 'abacus'"),
    ("null\n            advantage_estimator: gigpo", "groups the turns of multi-turn episodes: set `environment:`"),
    ("{name: tools, max_turns: 0}", "stages.grpo.environment.max_turns"),
    ("{name: gym}", "stages.grpo.environment.name: unknown environment 'gym'"),
    ("{name: ENV:needs_answer}", "reads columns ['answer'], which data file"),
])
def test_validate_exits_2_before_training(tiny_model_dir, env_file, tmp_path, environment, says):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Say something", "solution": "a"}\n' * 4)
    path = _recipe(tmp_path, tiny_model_dir, data, environment.replace("ENV", str(env_file)))
    proc = subprocess.run([sys.executable, "-m", "posttrain", "validate", path], check=False, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert says in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "grpo").exists()


@pytest.mark.parametrize("estimator", ["group_normalized", "gigpo"])
def test_grpo_trains_on_episodes(tiny_model_dir, env_file, tmp_path, estimator):
    """Three turns per episode (turns end on a stop string), per-turn rewards summed into the
    reward, and the episode metrics logged; the policy is updated (GRPO's advantages, or GiGPO's
    with its step groups)."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Item {i}:", "answer": "x"}) + "\n" for i in range(8)))
    recipe = {"name": "agents", "model": str(tiny_model_dir), "run_dir": str(tmp_path / "run"),
              "stages": {"grpo": {"kind": "grpo", "data": str(data), "rewards": [{"verifier": "exact"}],
                                  "prompts_per_step": 4, "group_size": 2, "max_tokens": 6, "total_steps": 2,
                                  "lr": 1e-3, "stop": list("abcdefghijklmnopqrstuvwxyz "),
                                  "advantage_estimator": estimator,
                                  "environment": {"name": f"{env_file}:Chatty", "max_turns": 3,
                                                  "max_episode_tokens": 64}}}}
    result = posttrain.run(recipe, show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert record["reward"] == pytest.approx(record["rewards/exact/mean"] + record["rewards/environment/mean"], abs=1e-6)
        assert 1 < record["episode/turns"] <= 3 and "episode/vowel_turns" in record
        assert record["rewards/environment/mean"] == pytest.approx(0.5 * record["episode/vowel_turns"], abs=1e-6)
        assert ("advantages/step_group_size" in record) == (estimator == "gigpo")
    from posttrain.report.plots import numeric_series, panel_keys
    from posttrain.stages.grpo import GRPOConfig

    # the report's figure for the stage charts reward, turns and tool calls first
    assert panel_keys(numeric_series(records), GRPOConfig.key_metrics, 6)[:3] == ["reward", "episode/turns",
                                                                                 "episode/tool_calls"]
    assert (tmp_path / "run" / "plots" / "grpo.png").exists()
    trained = AutoModelForCausalLM.from_pretrained(result.stage("grpo").output).state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in trained.items())


def test_kl_turn_weights_weigh_each_turns_kl(tiny_model_dir, env_file, tmp_path):
    """kl_turn_weights reach the loss by turn: [0] zeroes every turn's KL term, so the run equals
    kl_coef 0's to the bit; [0, 1] frees the first turn only, so its model differs from both the
    kl_coef 0 model and the plain kl_coef model. (Step 1 samples from the reference itself, KL 0; step 2 has one.)"""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Item {i}:", "answer": "x"}) + "\n" for i in range(8)))

    def trained(name: str, **knobs) -> dict[str, torch.Tensor]:
        stage = {"kind": "grpo", "data": str(data), "rewards": [{"verifier": "exact"}], "prompts_per_step": 4,
                 "group_size": 2, "max_tokens": 6, "total_steps": 2, "lr": 1e-2, "stop": list("abcdefghijklmnopqrstuvwxyz "),
                 "environment": {"name": f"{env_file}:Chatty", "max_turns": 3, "max_episode_tokens": 64}, **knobs}
        result = posttrain.run({"name": name, "model": str(tiny_model_dir), "run_dir": str(tmp_path / name),
                                "stages": {"grpo": stage}}, show_progress=False)
        return AutoModelForCausalLM.from_pretrained(result.stage("grpo").output).state_dict()

    free = trained("free", kl_coef=0.0)
    zeroed = trained("zeroed", kl_coef=5.0, kl_turn_weights=[0.0])
    first_free = trained("first_free", kl_coef=5.0, kl_turn_weights=[0.0, 1.0])
    everywhere = trained("everywhere", kl_coef=5.0)
    assert all(torch.equal(zeroed[k], v) for k, v in free.items())
    assert any(not torch.equal(first_free[k], v) for k, v in free.items())
    assert any(not torch.equal(first_free[k], v) for k, v in everywhere.items())


def test_sft_lists_the_tools_in_every_prompt(tmp_path, env_file):
    """sft's `tools:` adds the schemas TRL's SFTTrainer renders; an unknown tool is a preflight problem."""
    import json

    from posttrain.agents import load_tool
    from posttrain.stages.sft import SFTConfig, with_tools

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    config = SFTConfig.model_validate({"kind": "sft", "data": str(data), "tools": ["abacus"]})
    problems = config.preflight_problems("stages.sft", tmp_path)
    assert any(p.startswith("stages.sft.tools[0]: unknown tool 'abacus'") for p in problems), problems
    from datasets import Dataset

    rows = with_tools(Dataset.from_list([{"messages": [], "tools": "old"}] * 2), ["calculator"])
    assert rows["tools"] == [json.dumps([load_tool("calculator").schema])] * 2
