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
  ``max_turns``. The default message names the answer read, not the verifier's reason: a
  reason such as ``41 != 42`` would hand the model the reference answer. The turn info records
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
    other options go to the verifier).

    Why ``retry_penalty``: with the outcome reward alone, a wrong first attempt rescued by the
    second earns what a right first attempt earns, so GRPO reinforces the wrong first answer's
    tokens too. SCoRe's second stage (Kumar et al. 2024, arXiv 2409.12917, Sec. 5) rewards every
    attempt, so a corrected episode earns less than one right at once; a penalty of 0.5 per wrong
    attempt gives the same order here (right at once 1, corrected 0.5, wrong twice -1, before the
    reward channels' weights).
    """

    columns = ("prompt",)

    def __init__(self, verifier: str = "math", message: str = "{answer} is not correct. Try again.",
                 retry_penalty: float = 0.0, **verifier_options: Any):
        super().__init__(verifier=verifier, message=message, retry_penalty=retry_penalty, **verifier_options)
        from posttrain.verification import load_verifier

        if not isinstance(retry_penalty, (int, float)) or retry_penalty < 0:
            raise ConfigError(f"environment feedback: retry_penalty must be a number >= 0, got {retry_penalty!r}")
        self.verifier = load_verifier(verifier, **verifier_options)
        self.message = message
        self.retry_penalty = float(retry_penalty)
        self.row: dict[str, Any] = {}
        self.attempt = 0
        self.rejected: set[str] = set()

    def reset(self, row: dict[str, Any]) -> str | list[dict[str, Any]]:
        self.row, self.attempt, self.rejected = row, 0, set()
        return row["prompt"]

    def step(self, text: str) -> StepResult:
        self.attempt += 1
        columns = {k: v for k, v in self.row.items() if k != "prompt"}
        result = self.verifier(text, **columns)
        correct = bool(result.passed) if result.passed is not None else result.score >= 1.0
        info = {f"attempt_{self.attempt}": 1.0, f"attempt_{self.attempt}_correct": float(correct)}
        answer = str(result.extracted) if result.extracted is not None else None
        if self.attempt > 1:
            info["repeats"] = float(answer is not None and answer in self.rejected)
        if correct:
            return StepResult(done=True, info=info)
        if answer is not None:
            self.rejected.add(answer)
        answer = answer or "Your answer"
        text = self.message.format(answer=answer, reason=result.reason or "wrong")
        return StepResult(messages=[{"role": "user", "content": text}], reward=-self.retry_penalty, info=info)


BUILTIN_ENVIRONMENTS: dict[str, type] = {"tools": ToolsEnvironment, "feedback": FeedbackEnvironment,
                                         "trl": TRLEnvironment, "openai_agent": OpenAIAgentEnvironment}
