"""Tools: the calculator's arithmetic and refusals, schemas from signatures, the runner's
containment (raise, hang, non-text results) and its failure accounting."""
from __future__ import annotations

import time

import pytest
from agent_helpers import TOOLS_FILE

from posttrain.agents import ToolArgumentError, ToolRunner, load_tool, load_tools
from posttrain.agents.calculator import evaluate
from posttrain.errors import ConfigError, ToolError


@pytest.fixture
def tools_file(tmp_path):
    path = tmp_path / "my_tools.py"
    path.write_text(TOOLS_FILE)
    return path


@pytest.mark.parametrize(("expression", "value"), [
    ("123 * 4567", 561741),          # 123*4567 = 492000 + 69741 (4567*100=456700, *20=91340, *3=13701)
    ("(2 + 3) ** 2 / 5", 5),         # 25/5, exact: stays an int
    ("7 / 2", 3.5),
    ("-3 + 10 // 3", 0),             # -3 + 3
    ("2 ^ 10", 1024),                # ^ read as power
    ("17 % 5", 2),
])
def test_calculator_values(expression, value):
    result = evaluate(expression)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(("expression", "says"), [
    ("9**9**9", "exponent 387420489 is larger than 64"),
    ("__import__('os').system('true')", "unsupported element"),
    ("x + 1", "unsupported element 'x'"),
    ("1 / 0", "division by zero"),
    ("10**60 * 10**60 * 10**60 * 10**60", "more than 200 digits"),
    ("'a' * 3", "unsupported element"),
    ("", "empty"),
    ("1 +", "not an arithmetic expression"),
])
def test_calculator_refuses_without_evaluating(expression, says):
    start = time.perf_counter()
    with pytest.raises(ToolArgumentError, match=says.replace("(", r"\(").replace("*", r"\*")):
        evaluate(expression)
    assert time.perf_counter() - start < 1.0


def test_schema_comes_from_the_signature(tools_file):
    tool = load_tool(f"{tools_file}:slow")
    assert tool.name == "slow" and tool.required == ["seconds"]
    assert tool.schema["function"]["parameters"]["properties"]["seconds"] == {"type": "number", "description": "How long to sleep."}
    assert load_tool("calculator").schema["function"]["description"] == "Evaluate an arithmetic expression exactly."


@pytest.mark.parametrize(("ref", "says"), [
    ("no_hints", "type hint on every parameter"),
    ("no_docstring", "docstring"),
    ("missing", "has no attribute 'missing'"),
])
def test_bad_tools_are_config_errors_naming_the_key(tools_file, ref, says):
    with pytest.raises(ConfigError, match=says) as info:
        load_tools(["calculator", f"{tools_file}:{ref}"], key="stages.grpo.environment.tools")
    assert "stages.grpo.environment.tools[1]" in str(info.value)


def test_unknown_and_duplicate_tools():
    with pytest.raises(ConfigError, match="unknown tool 'abacus'.*calculator, python"):
        load_tools(["abacus"])
    with pytest.raises(ConfigError, match="two tools are named 'calculator'"):
        load_tools(["calculator", "posttrain.agents.calculator:calculator"])


def test_runner_answers_every_mistake_with_a_message(tools_file):
    tools = load_tools(["calculator", f"{tools_file}:broken", f"{tools_file}:opaque"])
    with ToolRunner(tools, timeout_s=5, max_failure_rate=1.0) as runner:
        results = runner.call_many([
            ("calculator", {"expression": "6*7"}),
            ("calculator", {"expression": "1/0"}),            # the model's mistake: rejected
            ("calculator", {"expr": "1"}),                     # wrong argument name
            ("calculator", {"expression": 3}),                 # wrong JSON type
            ("abacus", {}),                                    # unknown tool
            ("broken", {"x": 1}),                              # the tool's failure
            ("opaque", {"x": 1}),                              # neither text nor JSON
        ])
        assert [r.status for r in results] == ["ok", "rejected", "rejected", "rejected", "rejected", "error", "error"]
        assert results[0].content == "42"
        assert results[1].content == "Error: calculator: division by zero"
        assert results[2].content == "Error: calculator: missing expression; unexpected expr (parameters: expression)"
        assert "must be a string" in results[3].content
        assert results[4].name == "unknown" and "unknown tool 'abacus'" in results[4].content
        assert results[5].content == "Error: broken failed: RuntimeError: the database is down"
        assert "neither text nor JSON" in results[6].content
        stats = runner.take_stats()
    assert (stats["calculator"].calls, stats["calculator"].rejected, stats["calculator"].failures) == (4, 3, 0)
    assert (stats["broken"].failures, stats["opaque"].failures, stats["unknown"].rejected) == (1, 1, 1)


def test_a_hanging_tool_times_out_and_the_runner_goes_on(tools_file):
    with ToolRunner(load_tools([f"{tools_file}:slow", "calculator"]), timeout_s=0.3, workers=2,
                    max_failure_rate=1.0) as runner:
        start = time.perf_counter()
        hung, ok = runner.call_many([("slow", {"seconds": 30}), ("calculator", {"expression": "1+1"})])
        assert time.perf_counter() - start < 5
        assert hung.status == "timeout" and hung.content == "Error: slow did not answer within 0.3 s"
        assert ok.content == "2"
        assert runner.call("slow", {"seconds": 0.0}).content == "slept"
        assert runner.lifetime["slow"].timeouts == 1


def test_too_many_failures_stop_the_stage_naming_the_tool_and_an_example(tools_file):
    with ToolRunner(load_tools([f"{tools_file}:broken"]), max_failure_rate=0.5, min_calls=4) as runner:
        for _ in range(3):
            runner.call("broken", {"x": 1})  # below min_calls: counted, not judged
        with pytest.raises(ToolError, match=r"tool 'broken' .*failed 4 of 4 calls.*the database is down.*\"x\": 1"):
            runner.call("broken", {"x": 1})


def test_model_mistakes_never_stop_the_stage():
    with ToolRunner(load_tools(["calculator"]), min_calls=2, max_failure_rate=0.0) as runner:
        for _ in range(5):
            assert runner.call("calculator", {"expression": "1/0"}).status == "rejected"


def test_python_tool_runs_in_the_sandbox(monkeypatch):
    from posttrain.agents import python_tool

    tool = load_tool("python")
    assert tool.fn(code="print(6 * 7)") == "42\n"
    out = tool.fn(code="import sys; print('oops', file=sys.stderr); sys.exit(3)")
    assert out == "stderr:\noops\n\n[exit status 3]"
    monkeypatch.setattr(python_tool, "TIMEOUT_S", 0.5)
    assert tool.fn(code="while True: pass").endswith("[killed: timeout]")
    long = tool.fn(code="print('x' * 5000)")  # 5001 bytes: 500 kept at each end
    assert long == "x" * 500 + "\n...[4001 bytes cut]...\n" + "x" * 499 + "\n"
