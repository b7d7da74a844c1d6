"""Multi-turn episodes, token in / token out: masks, the token oracle, limits, malformed and
hanging tools, environment failures, and the sampled ids and log-probs on a real engine."""
from __future__ import annotations

import functools
import math
import time

import pytest
import torch
from agent_helpers import TOOLS_FILE, ScriptedEngine

from posttrain.agents import Environment, StepResult, Toolbox, ToolRunner, load_tools, make_parser
from posttrain.agents.builtin_envs import FeedbackEnvironment, ToolsEnvironment
from posttrain.agents.episodes import EpisodeLimits, EpisodeRunner, episode_metrics
from posttrain.errors import ConfigError, ToolError
from posttrain.models import init_model, load_tokenizer
from posttrain.rl.loop.tokens import collate
from posttrain.rl.rollout import SamplingConfig, make_engine

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>'
ROWS = [{"prompt": "What is 12*34?", "answer": "408"}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(init_model(tmp_path_factory.mktemp("agents") / "tiny", arch="qwen2", size="tiny", seed=0))


def tools_runner(tokenizer, tools=("calculator",), limits=None, timeout_s=5.0, env=ToolsEnvironment, **kw):
    loaded = load_tools(list(tools))
    toolbox = Toolbox(loaded, ToolRunner(loaded, timeout_s=timeout_s, max_failure_rate=1.0), make_parser("hermes"))
    limits = limits or EpisodeLimits(max_turns=4, max_tokens_per_turn=64, max_episode_tokens=256)
    return EpisodeRunner(env, "tools", tokenizer, limits, toolbox, **kw)


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def test_a_tool_episode_masks_exactly_the_model_tokens(tokenizer):
    """Turn 1 calls the calculator, turn 2 answers: the mask is 1 on the two sampled turns (their
    eos included) and 0 on the tool's answer and the next assistant header."""
    engine = ScriptedEngine(tokenizer, [[CALL], ["408"]])
    runner = tools_runner(tokenizer)
    batch = runner.run(engine, ROWS, SamplingConfig(n=1, max_tokens=64))
    (turn1_prompt, [turn1]), (turn2_prompt, [turn2]) = engine.calls
    tool_ids = turn2_prompt[0][len(turn1_prompt[0]) + len(turn1):]
    assert tokenizer.decode(tool_ids) == "\n<|im_start|>tool\n408<|im_end|>\n<|im_start|>assistant\n"
    assert batch.prompt_ids[0] == turn1_prompt[0]
    assert batch.completion_ids[0] == turn1 + tool_ids + turn2  # the sampled ids, as sampled
    assert batch.completion_mask[0] == [1] * len(turn1) + [0] * len(tool_ids) + [1] * len(turn2)
    assert batch.sampler_logprobs[0] == [-1.0] * len(turn1) + [None] * len(tool_ids) + [-1.0] * len(turn2)
    assert batch.completions == ["408"] and batch.finish_reasons == ["stop"]
    record = batch.episodes[0]
    assert (record["turns"], record["info"]["tool_calls"], record["info"]["tool_calls/calculator"]) == (2, 1.0, 1.0)
    # collate: the loss mask is the completion mask; the tool tokens are attended to
    tensors = collate(batch, tokenizer.pad_token_id)
    assert tensors.response_mask[0].tolist() == [float(m) for m in batch.completion_mask[0]]
    assert tensors.attention_mask[0, tensors.prompt_width:].sum() == len(batch.completion_ids[0])
    assert torch.isnan(tensors.sampler_logprobs[0, len(turn1):len(turn1) + len(tool_ids)]).all()
    runner.close()


def test_token_oracle_trained_ids_equal_the_template_of_the_final_messages(tokenizer):
    """For every episode of a batch (parallel calls, malformed calls, answers, a tool error), the
    prompt + completion ids equal apply_chat_template of the final messages with the tools, up to
    the template's newline after the last turn's eos (the episode ends at the eos)."""
    parallel = CALL + '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
    turns = [[CALL, parallel, "<tool_call>{oops</tool_call>", "no tools needed: 7"],
             ["408", "the answers are 408 and 4", '<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>'],
             ["I give up"]]
    rows = [{"prompt": f"Question {i}", "answer": "1"} for i in range(4)]
    runner = tools_runner(tokenizer, limits=EpisodeLimits(max_turns=4, max_tokens_per_turn=128, max_episode_tokens=512))
    batch = runner.run(ScriptedEngine(tokenizer, turns), rows, SamplingConfig(n=1, max_tokens=64))
    schemas = runner.toolbox.schemas
    for i, record in enumerate(batch.episodes):
        expected = tokenizer.apply_chat_template(record["messages"], tools=schemas, tokenize=True)
        expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
        ours = batch.prompt_ids[i] + batch.completion_ids[i]
        assert tokenizer.decode(expected[len(ours):]) == "\n", i
        diff = first_difference(ours, list(expected[:len(ours)]))
        assert diff is None, (f"episode {i}: first difference at token {diff}: ours "
                              f"{tokenizer.decode(ours[diff:diff + 8])!r} vs template {tokenizer.decode(expected[diff:diff + 8])!r}")
    assert [r["turns"] for r in batch.episodes] == [2, 2, 3, 1]
    assert batch.episodes[2]["info"]["tool_errors"] == 2.0  # the malformed call, then the rejected 1/0
    assert "not valid JSON" in batch.episodes[2]["messages"][2]["content"]
    assert batch.episodes[1]["messages"][2:4] == [{"role": "tool", "name": "calculator", "content": "408"},
                                                  {"role": "tool", "name": "calculator", "content": "4"}]
    runner.close()


def test_limits_turns_and_episode_tokens(tokenizer):
    runner = tools_runner(tokenizer, limits=EpisodeLimits(max_turns=2, max_tokens_per_turn=64, max_episode_tokens=256))
    batch = runner.run(ScriptedEngine(tokenizer, [[CALL], [CALL]]), ROWS, SamplingConfig(n=1, max_tokens=64))
    assert batch.episodes[0]["turn_limit"] and batch.finish_reasons == ["stop"] and batch.episodes[0]["turns"] == 2
    # the episode budget ends a turn mid-way: truncated, shaped like an overlong completion
    call_tokens = len(tokenizer(CALL)["input_ids"]) + 1
    answer = len(runner.renderer.continuation_ids([{"role": "tool", "content": "408"}], ended_with_eos=True))
    runner = tools_runner(tokenizer, limits=EpisodeLimits(max_turns=4, max_tokens_per_turn=64,
                                                          max_episode_tokens=call_tokens + answer + 3))
    batch = runner.run(ScriptedEngine(tokenizer, [[CALL], ["the answer is 408"]]), ROWS, SamplingConfig(n=1, max_tokens=64))
    assert batch.finish_reasons == ["length"] and len(batch.completion_ids[0]) == call_tokens + answer + 3
    assert batch.completion_mask[0] == [1] * call_tokens + [0] * answer + [1] * 3
    assert batch.episodes[0]["truncated"]
    # a turn that hits max_tokens_per_turn ends the episode as truncated
    runner = tools_runner(tokenizer, limits=EpisodeLimits(max_turns=4, max_tokens_per_turn=5, max_episode_tokens=256))
    batch = runner.run(ScriptedEngine(tokenizer, [[CALL]]), ROWS, SamplingConfig(n=1, max_tokens=64))
    assert batch.finish_reasons == ["length"] and batch.completion_ids[0] == ScriptedEngine(tokenizer, [[CALL]]).generate_ids(
        [[1]], SamplingConfig(n=1, max_tokens=5)).completion_ids[0]
    # no room for the tool's answer plus a turn: truncated before the environment's tokens
    runner = tools_runner(tokenizer, limits=EpisodeLimits(max_turns=4, max_tokens_per_turn=64,
                                                          max_episode_tokens=call_tokens + answer - 1))
    batch = runner.run(ScriptedEngine(tokenizer, [[CALL]]), ROWS, SamplingConfig(n=1, max_tokens=64))
    assert batch.finish_reasons == ["length"] and batch.completion_mask[0] == [1] * call_tokens


def test_a_hanging_tool_is_answered_and_counted(tokenizer, tmp_path):
    (tmp_path / "my_tools.py").write_text(TOOLS_FILE)
    runner = tools_runner(tokenizer, tools=[f"{tmp_path}/my_tools.py:slow"], timeout_s=0.3)
    call = '<tool_call>{"name": "slow", "arguments": {"seconds": 30}}</tool_call>'
    start = time.perf_counter()
    batch = runner.run(ScriptedEngine(tokenizer, [[call], ["done"]]), ROWS, SamplingConfig(n=1, max_tokens=64))
    assert time.perf_counter() - start < 5
    assert batch.episodes[0]["messages"][2]["content"] == "Error: slow did not answer within 0.3 s"
    assert batch.episodes[0]["info"]["tool_errors"] == 1.0 and batch.completions == ["done"]
    runner.close()


class Crashing(Environment):
    def reset(self, row):
        return row["prompt"]

    def step(self, text):
        raise KeyError("state lost")


class Hanging(Environment):
    def reset(self, row):
        return row["prompt"]

    def step(self, text):
        time.sleep(30)


class Nagging(Environment):
    """Asks for more after every turn and pays 0.25 per turn (never done)."""

    def reset(self, row):
        return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": row["prompt"]}]

    def step(self, text):
        return StepResult(messages=[{"role": "user", "content": "More."}], reward=0.25, info={"nags": 1})


def test_environment_failures_end_the_episode_then_stop_the_stage(tokenizer):
    runner = EpisodeRunner(Crashing, "crashing", tokenizer, EpisodeLimits(4, 16, 64), max_env_error_rate=0.5)
    batch = runner.run(ScriptedEngine(tokenizer, [["a"] * 4]), ROWS * 4, SamplingConfig(n=1, max_tokens=16))
    assert [r["env_error"] for r in batch.episodes] == ["raised KeyError: 'state lost'"] * 4
    with pytest.raises(ToolError, match=r"environment 'crashing': 5 of 8 step\(\) calls failed, more than 0.5.*KeyError.*after the turn 'a'"):
        runner.run(ScriptedEngine(tokenizer, [["a"] * 4]), ROWS * 4, SamplingConfig(n=1, max_tokens=16))
    hanging = EpisodeRunner(Hanging, "hanging", tokenizer, EpisodeLimits(4, 16, 64, step_timeout_s=0.3))
    start = time.perf_counter()
    batch = hanging.run(ScriptedEngine(tokenizer, [["a"]]), ROWS, SamplingConfig(n=1, max_tokens=16))
    assert time.perf_counter() - start < 5 and batch.episodes[0]["env_error"] == "did not answer within 0.3 s"


class BadReset(Environment):
    """reset raises on rows marked "crash", hangs on rows marked "hang", else plays one turn."""

    def reset(self, row):
        if row.get("mode") == "crash":
            raise KeyError("no such level")
        if row.get("mode") == "hang":
            time.sleep(30)
        return row["prompt"]

    def step(self, text):
        return StepResult(done=True, reward=1.0)


def test_a_failing_or_hanging_reset_ends_its_episode_and_is_counted(tokenizer):
    """A reset that raises or hangs past step_timeout_s ends its episode before the first turn, on
    the row's own prompt with nothing to train on; the other episodes play; past
    max_env_error_rate the stage stops, naming the row."""
    runner = EpisodeRunner(BadReset, "bad", tokenizer, EpisodeLimits(2, 16, 64, step_timeout_s=0.3),
                           max_env_error_rate=0.5)
    rows = [{"prompt": "a", "mode": "crash"}, {"prompt": "b", "mode": "hang"}, {"prompt": "c"}]
    start = time.perf_counter()
    batch = runner.run(ScriptedEngine(tokenizer, [["x"]]), rows, SamplingConfig(n=1, max_tokens=16))
    assert time.perf_counter() - start < 5
    crashed, hung, _ = batch.episodes
    assert crashed["env_error"] == "reset() raised KeyError: 'no such level'"
    assert hung["env_error"] == "reset() did not answer within 0.3 s"
    assert [e["turns"] for e in batch.episodes] == [0, 0, 1] and batch.env_rewards == [0.0, 0.0, 1.0]
    assert batch.completion_ids[:2] == [[], []] and crashed["info"]["env_errors"] == 1.0
    text = tokenizer.apply_chat_template([{"role": "user", "content": "a"}], add_generation_prompt=True, tokenize=False)
    assert list(batch.prompt_ids[0]) == tokenizer(text, add_special_tokens=False)["input_ids"]
    tensors = collate(batch, tokenizer.pad_token_id)
    assert tensors.response_mask[:2].sum() == 0 and tensors.response_mask[2].sum() > 0
    # resets are counted against resets: one bad row in a batch of good ones does not stop the stage
    fresh = EpisodeRunner(BadReset, "bad", tokenizer, EpisodeLimits(2, 16, 64), max_env_error_rate=0.5)
    fresh.run(ScriptedEngine(tokenizer, [["x"] * 15]), [rows[0]] + [rows[2]] * 15, SamplingConfig(n=1, max_tokens=16))
    assert fresh.calls == {"reset()": [1, 16], "step()": [0, 15]}
    with pytest.raises(ToolError, match=r"environment 'bad': 6 of 11 reset\(\) calls failed, more than 0.5. "
                                        r"Example: reset\(\) raised KeyError.*for the row \{'prompt': 'a', 'mode': 'crash'\}"):
        runner.run(ScriptedEngine(tokenizer, [[]]), [rows[0]] * 8, SamplingConfig(n=1, max_tokens=16))
    runner.close()
    fresh.close()


def test_an_episode_ends_length_before_it_outgrows_the_engines_context(tokenizer):
    """An engine with a context limit (vLLM's max_model_len): a turn never asks for more than the
    room left, and an episode whose environment messages filled the context ends "length" (flagged,
    truncated) instead of sending the engine a prompt it refuses."""
    engine = ScriptedEngine(tokenizer, [["a"], ["b " * 40]])
    runner = EpisodeRunner(Nagging, "nagging", tokenizer, EpisodeLimits(3, 64, 256))
    first = len(runner.renderer.prompt_ids(Nagging().reset({"prompt": "p"})))
    engine.context_limit = first + 24  # room for the first turn and the nag, then a few tokens
    batch = runner.run(engine, [{"prompt": "p"}], SamplingConfig(n=1, max_tokens=64))
    (_, [turn1]), (prompt2, [turn2]) = engine.calls
    assert len(prompt2[0]) + len(turn2) == engine.context_limit  # the second turn cut at the context
    assert batch.finish_reasons == ["length"] and batch.episodes[0]["truncated"] and batch.episodes[0]["turns"] == 2
    engine = ScriptedEngine(tokenizer, [["a"]])
    engine.context_limit = first + len(turn1) + 2  # the nag does not fit: dropped, no second call at all
    batch = runner.run(engine, [{"prompt": "p"}], SamplingConfig(n=1, max_tokens=64))
    assert len(engine.calls) == 1 and batch.finish_reasons == ["length"] and batch.episodes[0]["turns"] == 1
    assert batch.completion_ids[0] == turn1 and batch.episodes[0]["info"]["context_full"] == 1
    engine = ScriptedEngine(tokenizer, [])
    engine.context_limit = first  # the first prompt fills the context: no call, counted
    batch = runner.run(engine, [{"prompt": "p"}], SamplingConfig(n=1, max_tokens=64))
    assert engine.calls == [] and batch.episodes[0]["turns"] == 0 and batch.episodes[0]["info"]["context_full"] == 1


def test_messages_the_template_cannot_render_end_the_episode_counted(tokenizer, monkeypatch):
    runner = EpisodeRunner(Nagging, "nagging", tokenizer, EpisodeLimits(3, 16, 256))

    def cannot_render(messages, ended_with_eos):
        raise ValueError("no tool role in this template")

    monkeypatch.setattr(runner.renderer, "continuation_ids", cannot_render)
    batch = runner.run(ScriptedEngine(tokenizer, [["a"]]), [{"prompt": "p"}], SamplingConfig(n=1, max_tokens=16))
    assert batch.episodes[0]["env_error"] == ("returned messages the chat template cannot render "
                                              "(no tool role in this template)")
    assert batch.episodes[0]["turns"] == 1 and runner.calls["step()"] == [1, 1]


def test_per_turn_rewards_and_metrics(tokenizer):
    runner = EpisodeRunner(Nagging, "nagging", tokenizer, EpisodeLimits(3, 16, 256))
    batch = runner.run(ScriptedEngine(tokenizer, [["a", "b"], ["c", "d"], ["e", "f"]]), [{"prompt": "p"}],
                       SamplingConfig(n=2, max_tokens=16))
    assert batch.prompt_index == [0, 0] and batch.env_rewards == [0.75, 0.75]
    metrics = episode_metrics(batch.episodes)
    assert metrics["episode/turns"] == 3 and metrics["episode/turn_limit"] == 1.0 and metrics["episode/nags"] == 3
    assert metrics["episode/tool_calls"] == 0 and metrics["episode/tool_error_rate"] == 0


def test_feedback_environment_gives_another_attempt(tokenizer):
    runner = EpisodeRunner(FeedbackEnvironment, "feedback", tokenizer, EpisodeLimits(3, 16, 256))
    batch = runner.run(ScriptedEngine(tokenizer, [["41", "408"], ["408"]]), ROWS * 2, SamplingConfig(n=1, max_tokens=16))
    first, second = batch.episodes
    assert first["messages"][-2:] == [{"role": "user", "content": "41 is not correct. Try again."},
                                      {"role": "assistant", "content": "408"}]
    assert first["info"] == {"attempt_1": 1.0, "attempt_1_correct": 0.0, "attempt_2": 1.0,
                             "attempt_2_correct": 1.0, "repeats": 0.0} and first["turns"] == 2
    assert second["info"] == {"attempt_1": 1.0, "attempt_1_correct": 1.0} and second["turns"] == 1
    assert "408" not in first["messages"][-2]["content"]  # the reference answer is never revealed
    metrics = episode_metrics(batch.episodes)  # attempt k's accuracy: correct per attempt k made
    assert metrics["episode/attempt_1_accuracy"] == 0.5 and metrics["episode/attempt_2_accuracy"] == 1.0
    assert metrics["episode/attempt_2"] == 0.5 and "episode/attempt_1_correct_accuracy" not in metrics


def test_feedback_retry_penalty_makes_a_corrected_episode_earn_less(tokenizer):
    make = functools.partial(FeedbackEnvironment, retry_penalty=0.5)
    runner = EpisodeRunner(make, "feedback", tokenizer, EpisodeLimits(2, 16, 256))
    # right at once; wrong then right; wrong twice
    batch = runner.run(ScriptedEngine(tokenizer, [["408", "41", "41"], ["408", "7"]]), ROWS * 3,
                       SamplingConfig(n=1, max_tokens=16))
    assert batch.env_rewards == [0.0, -0.5, -1.0]  # plus the outcome channel's 1, 1, 0
    assert [e["turns"] for e in batch.episodes] == [1, 2, 2]
    with pytest.raises(ConfigError, match="retry_penalty must be a number >= 0"):
        FeedbackEnvironment(retry_penalty=-1)


def test_feedback_starts_after_a_given_wrong_first_attempt(tokenizer):
    """first_attempt_column: a row whose column holds a wrong answer starts after it (context,
    mask 0), so the model's first turn is the second attempt; an empty column plays as usual, and
    so does a given answer that is right (counted: the model is never told a right answer is wrong)."""
    make = functools.partial(FeedbackEnvironment, first_attempt_column="given", extract="last_number")
    assert make().columns == ("prompt", "given") and FeedbackEnvironment().columns == ("prompt",)
    rows = [{**ROWS[0], "given": "41"}, {**ROWS[0], "given": None}, {**ROWS[0], "given": "408"}]
    engine = ScriptedEngine(tokenizer, [["408", "41", "408"], ["7"]])
    batch = EpisodeRunner(make, "feedback", tokenizer, EpisodeLimits(2, 16, 256)).run(
        engine, rows, SamplingConfig(n=1, max_tokens=16))
    given, usual, right = batch.episodes
    assert given["messages"] == [{"role": "user", "content": "What is 12*34?"}, {"role": "assistant", "content": "41"},
                                 {"role": "user", "content": "41 is not correct. Try again."},
                                 {"role": "assistant", "content": "408"}]
    assert given["info"] == {"attempt_2": 1.0, "attempt_2_correct": 1.0, "repeats": 0.0} and given["turns"] == 1
    text = tokenizer.apply_chat_template(given["messages"][:3], add_generation_prompt=True, tokenize=False)
    expected_prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert list(batch.prompt_ids[0]) == list(expected_prompt)  # the given attempt is prompt, never trained
    assert batch.completion_mask[0] == [1] * len(batch.completion_ids[0])
    assert usual["info"]["attempt_1_correct"] == 0.0 and usual["info"]["attempt_2_correct"] == 0.0
    assert right["messages"][:1] == [{"role": "user", "content": "What is 12*34?"}] and right["turns"] == 1
    assert right["info"] == {"attempt_1": 1.0, "attempt_1_correct": 1.0, "given_right": 1.0}
    # each step's place among the assistant turns counts the given one; kl_turn_weights reads it
    # per token: the given row's generated tokens are all turn 1, the usual row's turn 0 then 1
    assert [[s["turn"] for s in e["steps"]] for e in (given, usual, right)] == [[1], [0, 1], [0]]
    from posttrain.rl.loop.advantages import token_turns

    turns = token_turns(batch.episodes, max(len(ids) for ids in batch.completion_ids))
    for i, turn_list in enumerate(([1], [0, 1], [0])):
        row, mask = turns[i, :len(batch.completion_mask[i])], batch.completion_mask[i]
        assert (row >= 0).long().tolist() == mask and (turns[i, len(mask):] == -1).all()
        for (start, end), turn in zip((s["span"] for s in batch.episodes[i]["steps"]), turn_list):
            assert (row[start:end] == turn).all() and end > start
    with pytest.raises(ConfigError, match="first_attempt_column must be a data column's name"):
        FeedbackEnvironment(first_attempt_column="")


def test_feedback_max_attempts_counts_the_given_attempt(tokenizer):
    """With max_attempts 2 an episode after a given wrong attempt has one model turn, as long as
    an ordinary two-attempt episode; max_turns alone would give it two."""
    rows = [{**ROWS[0], "given": "41"}, {**ROWS[0], "given": None}]
    for max_attempts, turns in ((2, [["7", "41"], ["9"]]), (None, [["7", "41"], ["9", "9"]])):
        make = functools.partial(FeedbackEnvironment, first_attempt_column="given", max_attempts=max_attempts)
        batch = EpisodeRunner(make, "feedback", tokenizer, EpisodeLimits(2, 16, 256)).run(
            ScriptedEngine(tokenizer, turns), rows, SamplingConfig(n=1, max_tokens=16))
        assert [e["turns"] for e in batch.episodes] == ([1, 2] if max_attempts else [2, 2])
        assert batch.episodes[1]["info"]["attempt_2_correct"] == 0.0
    assert "attempt_2" not in EpisodeRunner(
        functools.partial(FeedbackEnvironment, max_attempts=1), "feedback", tokenizer, EpisodeLimits(3, 16, 256)).run(
        ScriptedEngine(tokenizer, [["7"]]), ROWS, SamplingConfig(n=1, max_tokens=16)).episodes[0]["info"]
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="max_attempts must be an integer >= 1"):
            FeedbackEnvironment(max_attempts=bad)
    with pytest.raises(ConfigError, match="max_attempts must be at least 2 with first_attempt_column"):
        FeedbackEnvironment(first_attempt_column="given", max_attempts=1)


@pytest.mark.parametrize("seed", [3, 4])
def test_real_engine_ids_and_logprobs_are_the_sampled_ones(tmp_path, seed):
    """The hf engine on a tiny model: every model segment of an episode is exactly what the
    engine sampled for that turn, and its sampler log-probs equal the model's own (teacher forced
    over the whole episode) within float rounding."""
    model_dir = init_model(tmp_path / "tiny", arch="qwen2", size="tiny", seed=0)
    tokenizer = load_tokenizer(model_dir)
    engine = make_engine("hf", str(model_dir), tokenizer)
    calls = []
    generate_ids = engine.generate_ids

    def recording(prompt_ids, sampling):
        out = generate_ids(prompt_ids, sampling)
        calls.append(out)
        return out

    engine.generate_ids = recording
    stops = list("abcdefghijklmnopqrstuvwxyz ")  # turns of a random model end early on a stop string
    runner = EpisodeRunner(Nagging, "nagging", tokenizer, EpisodeLimits(3, 12, 96))
    batch = runner.run(engine, [{"prompt": "hi"}, {"prompt": "what now?"}],
                       SamplingConfig(n=2, max_tokens=12, temperature=1.0, seed=seed, stop=stops))
    assert len(calls) >= 2 and max(r["turns"] for r in batch.episodes) >= 2
    for i in range(len(batch)):
        ids, mask = batch.completion_ids[i], batch.completion_mask[i]
        segments, current = [], []
        for token, m in zip(ids, mask):
            if m:
                current.append(token)
            elif current:
                segments.append(current)
                current = []
        segments += [current] if current else []
        full = batch.prompt_ids[i] + ids
        sampled = {}  # where a turn's prompt ended -> what the engine sampled after it (this episode's turns)
        for call in calls:
            for prompt, out in zip(call.prompt_ids, call.completion_ids):
                if out and full[:len(prompt)] == prompt and full[len(prompt):len(prompt) + len(out)] == out:
                    sampled[len(prompt)] = out
        assert segments == [sampled[k] for k in sorted(sampled)], i
        scored = engine.score([batch.prompt_ids[i] + ids])[0][len(batch.prompt_ids[i]) - 1:]
        for t, (m, lp) in enumerate(zip(mask, batch.sampler_logprobs[i])):
            if m:
                assert math.isclose(lp, scored[t], abs_tol=1e-4), (i, t, lp, scored[t])
            if not m:
                assert lp is None


def test_tool_cost_multiplies_the_episode_reward():
    """environment.tool_cost otc: group 0's correct episodes used 1 and 2 calls (n=1): rewards
    1*1 and 1*sin((4/3)*pi/2) = 0.8660254; the wrong one stays 0. Group 1: a correct episode
    without calls (n=0): 1, and 1 call: cos(pi/3) = 0.5."""
    from types import SimpleNamespace

    from posttrain.agents.config import EnvironmentConfig
    from posttrain.rl.loop.experience import shaped_rewards
    from posttrain.rl.scored import ScoredBatch

    calls = [1, 2, 0, 0, 1, 3]
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    rollout = SimpleNamespace(episodes=[{"info": {"tool_calls": float(c)}} for c in calls])
    scored = ScoredBatch(rollout=rollout, rows=[{}] * 6, channel_scores={}, channel_passed={}, channel_errors={},
                         rewards=rewards, group_size=3)
    tensors = SimpleNamespace(response_mask=torch.ones(6, 2))
    config = SimpleNamespace(environment=EnvironmentConfig(name="tools", tool_cost="otc"), overlong_buffer=0)
    got = shaped_rewards(config, scored, tensors)
    assert got.tolist() == pytest.approx([1.0, math.sin(2 * math.pi / 3), 0.0, 1.0, 0.5, 0.0], abs=1e-6)
    config.environment = EnvironmentConfig(name="tools")
    assert torch.equal(shaped_rewards(config, scored, tensors), rewards)


def test_step_tensors_group_turns_by_what_preceded_them(tokenizer):
    """Three episodes of one prompt: two call 12*34 and see "408", one calls 2+2 and sees "4".
    Their first turns form one step group (the prompt), the second turns two groups; every
    model token maps to its turn, the tool's tokens to none; step rewards sum to the episode's."""
    from posttrain.rl.loop.advantages import step_tensors

    other = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
    runner = tools_runner(tokenizer)
    batch = runner.run(ScriptedEngine(tokenizer, [[CALL, CALL, other], ["408", "407", "4"]]), ROWS,
                       SamplingConfig(n=3, max_tokens=64))
    width = max(len(ids) for ids in batch.completion_ids)
    rewards = torch.tensor([1.0, 0.0, 0.0])
    steps = step_tensors(batch.episodes, rewards, group_size=3, width=width)
    groups = steps["step_groups"]
    assert groups[0, 0] == groups[1, 0] == groups[2, 0]
    assert groups[0, 1] == groups[1, 1] != groups[2, 1]
    assert steps["step_rewards"].sum(dim=1).tolist() == [1.0, 0.0, 0.0] and steps["step_mask"].all()
    for i, mask in enumerate(batch.completion_mask):
        turns = steps["token_steps"][i, :len(mask)]
        assert ((turns >= 0).long().tolist()) == mask
        first, second = batch.episodes[i]["steps"]
        assert (turns[first["span"][0]:first["span"][1]] == 0).all() and (turns[second["span"][0]:second["span"][1]] == 1).all()
    runner.close()
