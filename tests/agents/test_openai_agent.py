"""The ``openai_agent`` environment: agent code written against the OpenAI API (the real ``openai``
client) played as episodes, token in / token out, with its failures contained and counted."""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest
from agent_helpers import ScriptedEngine

from posttrain.agents import StepResult
from posttrain.agents.builtin_envs import FeedbackEnvironment
from posttrain.agents.config import EnvironmentConfig
from posttrain.agents.episodes import EpisodeLimits, EpisodeRunner, episode_metrics
from posttrain.agents.openai_agent import OpenAIAgentEnvironment, agent_result, new_messages
from posttrain.agents.session import environment_problems
from posttrain.errors import ToolError
from posttrain.models import init_model, load_tokenizer
from posttrain.rl.rollout import SamplingConfig, make_engine

AGENTS = '''
import json
import time
import urllib.error
import urllib.request

from openai import OpenAI

from posttrain.verification import load_verifier

SEEN, ERRORS, STATUSES = [], [], []
VERIFY = load_verifier("math")


def chat(base_url, messages, **extra):
    client = OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=30)
    reply = client.chat.completions.create(model="policy", messages=messages, **extra)
    SEEN.append(reply.choices[0].message.content)
    return reply.choices[0].message.content


def feedback(row, base_url):
    """The built-in feedback environment (retry_penalty 0), written as OpenAI-API agent code."""
    messages = [{"role": "user", "content": row["prompt"]}]
    while True:
        text = chat(base_url, messages)
        result = VERIFY(text, answer=row["answer"])
        if result.passed:
            return None
        answer = str(result.extracted) if result.extracted is not None else "Your answer"
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": f"{answer} is not correct. Try again."}]


def two_turns(row, base_url):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": row["prompt"]}]
    first = chat(base_url, messages, temperature=0.1, max_tokens=2)  # the stage's sampling wins
    messages += [{"role": "assistant", "content": first + "  "}, {"role": "user", "content": "Sure?"}]
    second = chat(base_url, messages)
    return {"reward": float("408" in second), "info": {"checks": 1}}


def never_stops(row, base_url):
    messages = [{"role": "user", "content": row["prompt"]}]
    while True:
        try:
            text = chat(base_url, messages)
        except Exception as exc:
            ERRORS.append(f"{type(exc).__name__}: {exc}")
            raise
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "More."}]


def edits_history(row, base_url):
    first = chat(base_url, [{"role": "user", "content": row["prompt"]}])
    try:
        chat(base_url, [{"role": "user", "content": "Another question"}, {"role": "assistant", "content": first},
                        {"role": "user", "content": "?"}])
    except Exception as exc:
        ERRORS.append(f"{type(exc).__name__}: {exc}")
        raise


def crashes(row, base_url):
    chat(base_url, [{"role": "user", "content": row["prompt"]}])
    raise KeyError("state lost")


def hangs(row, base_url):
    chat(base_url, [{"role": "user", "content": row["prompt"]}])
    time.sleep(30)


def slow_between_calls(row, base_url):
    chat(base_url, [{"role": "user", "content": row["prompt"]}])
    time.sleep(1.5)
    try:
        chat(base_url, [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "?"}])
    except Exception as exc:
        ERRORS.append(f"{type(exc).__name__}: {exc}")


def lingers(row, base_url):
    chat(base_url, [{"role": "user", "content": row["prompt"]}])
    time.sleep(2)  # outlives its episode, which the runner ended after step_timeout_s


def hangs_at_once(row, base_url):
    time.sleep(3)


def crashes_at_once(row, base_url):
    return row["missing"]


def returns_text(row, base_url):
    chat(base_url, [{"role": "user", "content": row["prompt"]}])
    return "great"


def post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def bad_requests(row, base_url):
    messages = [{"role": "user", "content": row["prompt"]}]
    for extra in ({"n": 2}, {"stream": True}, {"tools": [{"type": "function"}]}, {"messages": []}):
        STATUSES.append(post(f"{base_url}/chat/completions", {"model": "policy", "messages": messages, **extra}))
    return len(chat(base_url, messages))


def two_args(row):
    return 0.0
'''

ROWS = [{"prompt": "What is 12*34?", "answer": "408"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("openai_agent") / "tiny", arch="qwen2", size="tiny", seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return load_tokenizer(tiny)


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    path = tmp_path_factory.mktemp("agents") / "agents.py"
    path.write_text(AGENTS)
    return path


def agent_runner(tokenizer, agents, name, limits=None, step_timeout_s=30.0, **kw):
    ref = f"{agents}:{name}"
    limits = limits or EpisodeLimits(max_turns=3, max_tokens_per_turn=16, max_episode_tokens=128,
                                     step_timeout_s=step_timeout_s)
    return EpisodeRunner(lambda: OpenAIAgentEnvironment(ref), "openai_agent", tokenizer, limits, **kw)


def agent_state(agents, name):
    from posttrain.agents.openai_agent import load_agent

    return load_agent(f"{agents}:{name}").__globals__


def first_error(agents, name) -> str:
    """The first error the agent's thread recorded (it gets its answer after the episode ends)."""
    errors = agent_state(agents, name)["ERRORS"]
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    return errors[0] if errors else "the agent recorded no error within 10 s"


@pytest.mark.parametrize("seed", [1, 2])
def test_an_openai_agent_is_token_for_token_the_environment_it_rewrites(tiny, tokenizer, agents, seed):
    """The feedback environment and the same logic written as OpenAI-API agent code, on the hf
    engine with the same seed: identical episodes (ids, mask, sampler log-probs, messages); the
    model never answers right here, so every episode runs to the turn limit."""
    engine = make_engine("hf", str(tiny), tokenizer)
    sampling = SamplingConfig(n=2, max_tokens=12, temperature=1.0, seed=seed, stop=list("abcdefghijklmnopqrstuvwxyz "))
    limits = EpisodeLimits(max_turns=3, max_tokens_per_turn=12, max_episode_tokens=96)
    rows = ROWS + [{"prompt": "What is 7*8?", "answer": "56"}]
    builtin = EpisodeRunner(FeedbackEnvironment, "feedback", tokenizer, limits).run(engine, rows, sampling)
    runner = agent_runner(tokenizer, agents, "feedback", limits)
    played = runner.run(engine, rows, sampling)
    assert played.completion_ids == builtin.completion_ids and played.prompt_ids == builtin.prompt_ids
    assert played.completion_mask == builtin.completion_mask
    assert played.sampler_logprobs == builtin.sampler_logprobs and played.finish_reasons == builtin.finish_reasons
    assert [e["messages"] for e in played.episodes] == [e["messages"] for e in builtin.episodes]
    assert [e["turns"] for e in played.episodes] == [e["turns"] for e in builtin.episodes]
    assert max(e["turns"] for e in played.episodes) >= 2 and played.env_rewards == [0.0] * 4
    runner.close()


def test_turns_masks_rewards_and_the_stages_sampling(tokenizer, agents):
    """Two calls: the second call's new message is context (mask 0), the answers are the sampled
    ids (mask 1); the request's temperature/max_tokens are ignored; the agent's reward and info
    land in the episode; the whitespace it added to the echoed answer is tolerated."""
    engine = ScriptedEngine(tokenizer, [["41", "12"], ["408", "408"]])
    asked = []
    generate_ids = engine.generate_ids
    engine.generate_ids = lambda prompts, sampling: asked.append(sampling) or generate_ids(prompts, sampling)
    agent_state(agents, "two_turns")["SEEN"].clear()
    runner = agent_runner(tokenizer, agents, "two_turns")
    batch = runner.run(engine, ROWS * 2, SamplingConfig(n=1, max_tokens=16, temperature=0.7))
    assert [(a.temperature, a.max_tokens) for a in asked] == [(0.7, 16), (0.7, 16)]  # not the agent's 0.1 and 2
    (turn1_prompt, turn1), (turn2_prompt, turn2) = engine.calls
    context = turn2_prompt[0][len(turn1_prompt[0]) + len(turn1[0]):]
    assert tokenizer.decode(context) == "\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"
    assert batch.completion_ids[0] == turn1[0] + context + turn2[0]
    assert batch.completion_mask[0] == [1] * len(turn1[0]) + [0] * len(context) + [1] * len(turn2[0])
    assert tokenizer.decode(batch.prompt_ids[0]).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert batch.env_rewards == [1.0, 1.0] and [e["turns"] for e in batch.episodes] == [2, 2]
    assert episode_metrics(batch.episodes)["episode/checks"] == 1.0
    assert sorted(agent_state(agents, "two_turns")["SEEN"]) == ["12", "408", "408", "41"]  # what the agent got
    runner.close()


def test_the_turn_limit_ends_the_episode_and_releases_the_waiting_call(tokenizer, agents):
    engine = ScriptedEngine(tokenizer, [["a"], ["b"]])
    agent_state(agents, "never_stops")["ERRORS"].clear()
    runner = agent_runner(tokenizer, agents, "never_stops", EpisodeLimits(2, 16, 128))
    batch = runner.run(engine, ROWS, SamplingConfig(n=1, max_tokens=16))
    assert batch.episodes[0]["turn_limit"] and batch.episodes[0]["turns"] == 2
    assert "the episode is over" in first_error(agents, "never_stops")
    runner.close()


def test_agent_failures_are_contained_counted_then_stop_the_stage(tokenizer, agents):
    """An agent that edits the history, raises, hangs or returns text ends its episode as an
    environment error with the reason; past the failure rate the stage stops naming an example."""
    sampling = SamplingConfig(n=1, max_tokens=16)

    def play(name, rows=ROWS, **kw):
        runner = agent_runner(tokenizer, agents, name, **kw)
        try:
            return runner.run(ScriptedEngine(tokenizer, [["a"] * len(rows)]), rows, sampling)
        finally:
            runner.close()

    agent_state(agents, "edits_history")["ERRORS"].clear()
    assert "differs from the episode so far" in play("edits_history").episodes[0]["env_error"]
    assert "must extend one another" in first_error(agents, "edits_history")  # the agent was told
    assert play("crashes").episodes[0]["env_error"] == "raised KeyError: 'state lost'"
    assert "returned 'great'; expected a number, None or" in play("returns_text").episodes[0]["env_error"]
    start = time.perf_counter()
    error = play("hangs", step_timeout_s=0.5).episodes[0]["env_error"]
    assert time.perf_counter() - start < 10
    # the runner's timeout or the agent's wait, whichever fires first
    assert error == "did not answer within 0.5 s" or "neither called the model nor returned within 0.5 s" in error
    with pytest.raises(ToolError, match=r"environment 'openai_agent': 5 of 8 step\(\) calls failed, more than 0.5.*KeyError"):
        play("crashes", rows=ROWS * 8)
    # failing before the first model call: the reset fails, contained and counted the same way
    at_once = play("crashes_at_once").episodes[0]
    assert re.fullmatch(r"reset\(\) raised RuntimeError: agent .*crashes_at_once raised KeyError: 'missing' before its first "
                        r"model call", at_once["env_error"]) and at_once["turns"] == 0
    error = play("hangs_at_once", step_timeout_s=0.3).episodes[0]["env_error"]
    assert error == "reset() did not answer within 0.3 s" or re.fullmatch(
        r"reset\(\) raised RuntimeError: agent .*hangs_at_once raised TimeoutError: .*neither called the model nor returned "
        r"within 0.3 s \(environment.step_timeout_s\) before its first model call", error)
    with pytest.raises(ToolError, match=r"5 of 8 reset\(\) calls failed.*reset\(\) raised RuntimeError: .*crashes_at_once raised "
                                        r"KeyError: 'missing' before its first model call for the row \{'prompt'"):
        play("crashes_at_once", rows=ROWS * 8)


def test_a_step_abandoned_by_the_runner_releases_the_agent_and_its_threads(tokenizer, agents):
    """The agent works 1.5 s between calls, the step timeout is 0.3 s: the runner abandons the step
    and ends the episode at once; the agent's late call is refused ("the episode is over"), and the
    abandoned step thread ends (close() wakes it) instead of lingering."""
    agent_state(agents, "slow_between_calls")["ERRORS"].clear()
    runner = agent_runner(tokenizer, agents, "slow_between_calls", step_timeout_s=0.3)
    start = time.perf_counter()
    batch = runner.run(ScriptedEngine(tokenizer, [["a"] * 4]), ROWS * 4, SamplingConfig(n=1, max_tokens=16))
    assert time.perf_counter() - start < 5
    assert all(e["env_error"] for e in batch.episodes)
    assert "the episode is over" in first_error(agents, "slow_between_calls")
    deadline = time.monotonic() + 10
    while runner._workers.abandoned_alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner._workers.abandoned_alive == 0
    runner.close()


def test_agent_threads_outliving_their_episodes_stop_the_stage(tokenizer, agents, monkeypatch):
    """Python cannot stop a thread: past MAX_ORPHANED_AGENTS agent threads still running after
    their episodes ended (here 1, so that the 3 of one batch are too many), the next episode's
    reset stops the stage naming the agent."""
    from posttrain.agents import openai_agent

    monkeypatch.setattr(openai_agent, "MAX_ORPHANED_AGENTS", 1)
    runner = agent_runner(tokenizer, agents, "lingers", step_timeout_s=0.2)
    sampling = SamplingConfig(n=1, max_tokens=16)
    with pytest.raises(ToolError, match=r"threads of agent .*lingers are still running after their episodes ended "
                                        r"\(more than 1\)"):
        for _ in range(2):  # the first batch leaves 3 lingering threads (or earlier tests' lingering ones)
            runner.run(ScriptedEngine(tokenizer, [["a"] * 3]), ROWS * 3, sampling)
    runner.close()


def test_a_failing_close_is_counted_and_the_others_still_close(tokenizer):
    closed = []

    class Leaky:
        def reset(self, row):
            return row["prompt"]

        def step(self, text):
            return StepResult(done=True)

        def close(self):
            closed.append(self)
            if len(closed) == 1:
                raise OSError("socket already closed")

    runner = EpisodeRunner(Leaky, "leaky", tokenizer, EpisodeLimits(2, 16, 64))
    batch = runner.run(ScriptedEngine(tokenizer, [["a", "b"]]), ROWS * 2, SamplingConfig(n=1, max_tokens=16))
    assert len(closed) == 2 and [e["info"].get("close_errors", 0.0) for e in batch.episodes] == [1.0, 0.0]
    runner.close()


def test_refused_request_fields_answer_400_naming_them(tokenizer, agents):
    runner = agent_runner(tokenizer, agents, "bad_requests")
    batch = runner.run(ScriptedEngine(tokenizer, [["abc"]]), ROWS, SamplingConfig(n=1, max_tokens=16))
    statuses = agent_state(agents, "bad_requests")["STATUSES"]
    assert [(s, r["error"]["param"]) for s, r in statuses[:4]] == [(400, "n"), (400, "stream"), (400, "tools"),
                                                                    (400, "messages")]
    assert "environment.tools" in statuses[2][1]["error"]["message"]
    assert batch.env_rewards == [3.0] and batch.episodes[0]["env_error"] is None
    runner.close()


def test_an_episode_url_serves_models_then_answers_404_when_over(tokenizer, agents):
    env = OpenAIAgentEnvironment(f"{agents}:two_turns")
    env.reset(dict(ROWS[0]))
    url = env.base_url
    with urllib.request.urlopen(f"{url}/models", timeout=10) as reply:
        assert json.loads(reply.read())["data"][0]["id"] == "policy"
    env.close()
    request = urllib.request.Request(f"{url}/chat/completions", json.dumps({"messages": [
        {"role": "user", "content": "x"}]}).encode(), {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 404 and "is over" in json.loads(err.value.read())["error"]["message"]


def test_message_diff_and_results_by_hand():
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert new_messages(history, history[:1] + [{"role": "assistant", "content": " a\n"},
                                                {"role": "tool", "content": "r"}]) == [{"role": "tool", "content": "r"}]
    with pytest.raises(ValueError, match="message 1 .*differs"):
        new_messages(history, [history[0], {"role": "assistant", "content": "b"}, {"role": "user", "content": "?"}])
    with pytest.raises(ValueError, match="must add messages after the assistant's answer"):
        new_messages(history, history)
    assert agent_result(None, "x").reward == 0.0 and agent_result(True, "x").reward == 1.0
    result = agent_result({"reward": 0.5, "info": {"calls": 2}}, "x")
    assert (result.done, result.reward, result.info) == (True, 0.5, {"calls": 2.0})
    with pytest.raises(TypeError, match="expected a number, None or"):
        agent_result({"reward": 1, "extra": 2}, "x")


def test_a_broken_agent_block_is_found_before_training(agents):
    def problems(options):
        return environment_problems(EnvironmentConfig(name="openai_agent", options=options), "stages.grpo.environment",
                                    ["prompt"], "data.jsonl")

    assert problems({"agent": f"{agents}:feedback"}) == []
    [problem] = problems({"agent": f"{agents}:two_args"})
    assert "stages.grpo.environment.options" in problem and "does not take (row, base_url)" in problem
    [problem] = problems({"agent": f"{agents}:nowhere"})
    assert "nowhere" in problem
    [problem] = problems({})
    assert "stages.grpo.environment.options" in problem and "agent" in problem
    [problem] = problems({"agent": f"{agents}:feedback", "timeout_s": 5})
    assert "does not take ['agent', 'timeout_s']" in problem  # the wait is environment.step_timeout_s
