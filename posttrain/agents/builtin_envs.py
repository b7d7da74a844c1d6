"""The environments that ship with posttrain, written against the public contract
(:mod:`posttrain.agents.environment`) exactly as a user's environment would be.

- ``tools``: the prompt, then plain tool calling: every assistant turn's calls are run and
  answered with ``tool`` messages; the first turn without a call ends the episode (its text is
  the final answer the reward channels score).
- ``trl``: an environment written for TRL's ``environment_factory`` contract, run unchanged
  (:class:`TRLEnvironment`).
- ``openai_agent``: agent code written against the OpenAI API, a function ``agent(row,
  base_url)`` (:mod:`posttrain.agents.openai_agent`).
- ``feedback`` (SCoRe-style self-correction, Kumar et al. 2024, arXiv 2409.12917): the model
  answers, a verifier judges; a wrong answer is told so and gets another attempt, up to
  ``max_turns`` (or the option ``max_attempts``); an episode may start after a wrong answer given
  in the data (option ``first_attempt_column``). The default message names the answer read, not
  the verifier's reason: a reason such as ``41 != 42`` would hand the model the reference answer. The turn info records
  each attempt and whether it was right (``attempt_<k>``, ``attempt_<k>_correct``: the metrics'
  ``attempt_<k>_accuracy``) and ``repeats``, attempts that gave an answer already judged wrong.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

from posttrain.agents.environment import Environment, StepResult, first_messages
from posttrain.agents.openai_agent import OpenAIAgentEnvironment
from posttrain.agents.tools import Tool, tool_from_function
from posttrain.common.plugins import load_object
from posttrain.errors import ConfigError


class ToolsEnvironment(Environment):
    """Tool calling until the model answers without a call."""

    columns = ("prompt",)

    def reset(self, row: dict[str, Any]) -> str | list[dict[str, Any]]:
        return row["prompt"]  # a string or messages: the runner makes either the first messages

    def step(self, text: str) -> StepResult:
        turn = self.toolbox.run(text, self.episode_tools())
        if not turn.parsed.attempted:
            return StepResult(done=True, reward=self.final_reward())
        return StepResult(messages=turn.messages, info=turn.info)

    def final_reward(self) -> float:
        """Added to the episode's reward when the model answers (0 here)."""
        return 0.0


class TRLEnvironment(ToolsEnvironment):
    """An environment written for TRL's ``GRPOTrainer(environment_factory=...)``, run unchanged
    (option ``factory``: ``'module:Class'`` or ``'./file.py:Class'``, anything that makes one).

    TRL's contract (trl 1.16 ``grpo_trainer.py``): one instance per rollout; ``reset(**row)``
    returns None or a string appended to the last user message; every public method other than
    ``reset`` and ``get_reward`` is a tool (typed, with a docstring); an optional ``get_reward()``
    scores the finished rollout, added to the reward with weight 1 (here: the environment
    reward). The episode is plain tool calling, as in TRL: it ends when the model answers
    without a call.
    """

    def __init__(self, factory: str):
        super().__init__(factory=factory)
        make, origin = _trl_factory(factory)
        self.env = make()
        if not callable(getattr(self.env, "reset", None)):
            raise ConfigError(f"environment trl: {origin} made a {type(self.env).__name__} without a reset(**row) "
                              "method; TRL's environment_factory contract needs one")
        names = [n for n, _ in inspect.getmembers(type(self.env), predicate=inspect.isfunction)
                 if n not in ("reset", "get_reward") and not n.startswith("_")]
        self.tools = [tool_from_function(getattr(self.env, n), f"{origin}.{n}", "environment trl") for n in names]

    def episode_tools(self) -> list[Tool]:
        return self.tools

    def reset(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        messages = first_messages(row["prompt"], "environment trl")
        observation = self.env.reset(**row)
        if observation is not None:
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + str(observation)}
        return messages

    def final_reward(self) -> float:
        get_reward = getattr(self.env, "get_reward", None)
        return float(get_reward()) if callable(get_reward) else 0.0


@functools.lru_cache(maxsize=16)
def _trl_factory(ref: str) -> tuple[Any, str]:
    """The factory named by ``ref``, loaded once per process."""
    return load_object(ref, "environment trl: factory", ConfigError)


class FeedbackEnvironment(Environment):
    """Answer, be judged, and try again (options: ``verifier``, the verifier's name or reference,
    default ``math``; ``message``, the feedback text, which may use ``{answer}`` (what the verifier
    read) and ``{reason}`` (the verifier's reason: it may reveal the reference answer);
    ``retry_penalty``, a per-turn reward of ``-retry_penalty`` for every wrong attempt, default 0;
    ``first_attempt_column``, below; ``max_attempts``, the episode ends after that many attempts,
    default: when ``max_turns`` ends it; other options go to the verifier).

    Why ``retry_penalty``: with the outcome reward alone, a wrong first attempt rescued by the
    second earns what a right first attempt earns, so GRPO reinforces the wrong first answer's
    tokens too. SCoRe's second stage (Kumar et al. 2024, arXiv 2409.12917, Sec. 5) rewards every
    attempt, so a corrected episode earns less than one right at once; a penalty of 0.5 per wrong
    attempt gives the same order here (right at once 1, corrected 0.5, wrong twice -1, before the
    reward channels' weights).

    Why ``first_attempt_column`` (SCoRe's first stage, Sec. 5.1, trains the second attempt while
    holding the first near the base model's): rows whose column holds a wrong answer start after
    it, as if the model had answered it and been told so; the model's first turn is then the
    second attempt. GRPO's group of such a row shares one context, so every episode's advantage
    is about the correction alone, where a model that answers most questions right at once
    otherwise sees few second attempts, each after a different mistake. Rows whose column is
    empty play as usual, and so do rows whose given answer the verifier judges right (counted in
    the info as ``given_right``: the model is never told a right answer is wrong). A given attempt
    is not a turn: ``max_attempts`` (given ones included) keeps such episodes as long as the others.
    """

    columns = ("prompt",)

    def __init__(self, verifier: str = "math", message: str = "{answer} is not correct. Try again.",
                 retry_penalty: float = 0.0, first_attempt_column: str | None = None,
                 max_attempts: int | None = None, **verifier_options: Any):
        super().__init__(verifier=verifier, message=message, retry_penalty=retry_penalty,
                         first_attempt_column=first_attempt_column, max_attempts=max_attempts, **verifier_options)
        from posttrain.verification import load_verifier

        if not isinstance(retry_penalty, (int, float)) or retry_penalty < 0:
            raise ConfigError(f"environment feedback: retry_penalty must be a number >= 0, got {retry_penalty!r}")
        if first_attempt_column is not None and (not isinstance(first_attempt_column, str) or not first_attempt_column):
            raise ConfigError("environment feedback: first_attempt_column must be a data column's name, got "
                              f"{first_attempt_column!r}")
        if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
                                         or max_attempts < 1):
            raise ConfigError(f"environment feedback: max_attempts must be an integer >= 1, got {max_attempts!r}")
        if first_attempt_column and max_attempts is not None and max_attempts < 2:
            raise ConfigError("environment feedback: max_attempts must be at least 2 with first_attempt_column "
                              f"(the given attempt is the first), got {max_attempts}")
        self.verifier = load_verifier(verifier, **verifier_options)
        self.max_attempts = max_attempts
        self.message = message
        self.retry_penalty = float(retry_penalty)
        self.given_column = first_attempt_column
        if first_attempt_column:
            self.columns = ("prompt", first_attempt_column)
        self.row: dict[str, Any] = {}
        self.given_right = False
        self.attempt = 0
        self.rejected: set[str] = set()

    def reset(self, row: dict[str, Any]) -> str | list[dict[str, Any]]:
        self.row, self.attempt, self.rejected, self.given_right = row, 0, set(), False
        given = row.get(self.given_column) if self.given_column else None
        if given is None or str(given).strip() == "":
            return row["prompt"]
        given = str(given)
        correct, answer, result = self._judge(given)
        if correct:
            self.given_right = True
            return row["prompt"]
        self.attempt = 1
        return first_messages(row["prompt"], "environment feedback") + [
            {"role": "assistant", "content": given}, self._feedback(answer, result)]

    def step(self, text: str) -> StepResult:
        self.attempt += 1
        correct, answer, result = self._judge(text)
        info = {f"attempt_{self.attempt}": 1.0, f"attempt_{self.attempt}_correct": float(correct)}
        if self.given_right and self.attempt == 1:
            info["given_right"] = 1.0
        if self.attempt > 1:
            info["repeats"] = float(answer is not None and answer in self.rejected)
        if correct:
            return StepResult(done=True, info=info)
        if self.max_attempts is not None and self.attempt >= self.max_attempts:
            return StepResult(done=True, reward=-self.retry_penalty, info=info)
        return StepResult(messages=[self._feedback(answer, result)], reward=-self.retry_penalty, info=info)

    def _judge(self, text: str) -> tuple[bool, str | None, Any]:
        """(right?, the answer the verifier read or None, the verifier's result)."""
        columns = {k: v for k, v in self.row.items() if k not in ("prompt", self.given_column)}
        result = self.verifier(text, **columns)
        correct = bool(result.passed) if result.passed is not None else result.score >= 1.0
        return correct, (str(result.extracted) if result.extracted is not None else None), result

    def _feedback(self, answer: str | None, result: Any) -> dict[str, str]:
        """The user message after a wrong attempt (the answer is remembered: ``repeats``)."""
        if answer is not None:
            self.rejected.add(answer)
        text = self.message.format(answer=answer or "Your answer", reason=result.reason or "wrong")
        return {"role": "user", "content": text}


BUILTIN_ENVIRONMENTS: dict[str, type] = {"tools": ToolsEnvironment, "feedback": FeedbackEnvironment,
                                         "trl": TRLEnvironment, "openai_agent": OpenAIAgentEnvironment}
