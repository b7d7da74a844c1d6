"""The environment contract: what a multi-turn task tells the rollout loop, turn by turn.

posttrain makes one instance per episode (``cls(**options)`` from the recipe's
``environment.options``), then:

1. ``reset(row)`` gets the dataset row (every column by name) and returns the first messages
   (``[{"role": "user", "content": ...}]``; a string is one user message);
2. the model answers; ``step(text)`` gets the assistant turn's text and returns a
   :class:`StepResult`: the next messages (tool results, feedback), an optional reward for the
   turn, and whether the episode is done;
3. repeat until done, ``max_turns`` or the token budget. The stage's reward channels then score the
   final assistant turn; per-turn rewards add to that outcome reward;
4. ``close()``, if the class has one, once the episode is over however it ended (an exception it
   raises is counted in the episode's ``close_errors``, never stops the batch).

A ``reset`` or ``step`` that raises or runs past ``step_timeout_s`` ends its episode as a counted
environment error (a failed reset: before the first turn, on the row's own prompt); too many stop
the stage, naming the call, the error and the turn or row.

Set ``columns`` to the data columns ``reset``/``step`` read (checked before anything trains).
Tools named in the recipe reach the instance as ``self.toolbox`` (a :class:`Toolbox`: the tools,
their schemas for the chat template, and ``run(text)`` that parses and calls them). The built-in
``tools`` environment is written exactly this way; see :mod:`posttrain.agents.builtin_envs`.

>>> class Echo(Environment):
...     def reset(self, row):
...         return row["prompt"]
...     def step(self, text):
...         return StepResult(done=True, reward=float("yes" in text))
>>> env = Echo()
>>> env.reset({"prompt": "say yes"}), env.step("yes!").reward
('say yes', 1.0)
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.agents.toolcalls import ParsedTurn, ToolCallParser
from posttrain.agents.tools import Tool, ToolRunner
from posttrain.common.plugins import load_object
from posttrain.errors import ConfigError


@dataclass
class StepResult:
    """What the environment answers to one assistant turn."""

    messages: list[dict[str, Any]] = field(default_factory=list)  # appended before the next turn
    reward: float = 0.0                                            # added to the episode's reward
    done: bool = False
    info: dict[str, float] = field(default_factory=dict)           # counts summed into the metrics


@dataclass
class ToolTurn:
    """A turn's parsed calls and the ``tool`` messages that answer them (one per call, malformed
    calls included), with counts for the metrics."""

    parsed: ParsedTurn
    messages: list[dict[str, Any]]
    info: dict[str, float]


class Toolbox:
    """The recipe's tools for one environment instance: schemas to render, calls to run."""

    def __init__(self, tools: Sequence[Tool], runner: ToolRunner | None, parser: ToolCallParser):
        self.tools, self.runner, self.parser = list(tools), runner, parser

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """JSON schemas for ``apply_chat_template(..., tools=...)``."""
        return [t.schema for t in self.tools]

    def run(self, text: str, extra: Sequence[Tool] = ()) -> ToolTurn:
        """Parse ``text``'s tool calls and run them; malformed ones are answered with an error.
        ``extra``: tools of this episode only (see :meth:`Environment.episode_tools`)."""
        parsed = self.parser.parse(text)
        messages = [{"role": "tool", "content": error} for error in parsed.errors]
        info: dict[str, float] = {"tool_calls": float(len(parsed.calls) + len(parsed.errors)),
                                  "tool_errors": float(len(parsed.errors))}
        if parsed.calls:
            if self.runner is None:
                raise ConfigError("the environment called tools but no tool runner was built (environment.tools)")
            results = self.runner.call_many([(c.name, c.arguments) for c in parsed.calls], extra)
            for result in results:
                messages.append({"role": "tool", "name": result.name, "content": result.content})
                info[f"tool_calls/{result.name}"] = info.get(f"tool_calls/{result.name}", 0.0) + 1
                info["tool_errors"] += result.status != "ok"
                info["tool_seconds"] = info.get("tool_seconds", 0.0) + result.seconds
        return ToolTurn(parsed, messages, info)


class Environment:
    """Base class of environments (optional: any class with ``reset`` and ``step`` will do)."""

    #: Data columns the environment reads (checked against the data before training; set it on
    #: the instance in ``__init__`` when options decide).
    columns: tuple[str, ...] = ()
    #: Set by posttrain on each instance before ``reset``.
    toolbox: Toolbox | None = None
    #: Set by posttrain before ``reset``: the seconds a ``reset`` or ``step`` may take (``environment.step_timeout_s``).
    step_timeout_s: float = 60.0

    def __init__(self, **options: Any):
        self.options = options

    def reset(self, row: dict[str, Any]) -> str | list[dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__}.reset(row) must return the first messages")

    def step(self, text: str) -> StepResult:
        raise NotImplementedError(f"{type(self).__name__}.step(text) must return a StepResult")

    def episode_tools(self) -> list[Tool]:
        """Tools bound to this instance (its own methods), offered besides the recipe's; the same
        names for every instance, as the chat template lists them once per stage."""
        return []


def first_messages(value: Any, where: str) -> list[dict[str, Any]]:
    """``reset``'s return value as a message list; TypeError saying what was expected."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return [dict(m) for m in value]
    raise TypeError(f"{where}.reset returned {type(value).__name__} {str(value)[:80]!r}; expected a string "
                    "or a non-empty list of {'role': ..., 'content': ...} messages")


def check_step_result(value: Any, where: str) -> StepResult:
    """``step``'s return value, checked; TypeError saying what was expected."""
    if not isinstance(value, StepResult):
        raise TypeError(f"{where}.step returned {type(value).__name__}; expected posttrain.agents.StepResult")
    if not all(isinstance(m, dict) and "role" in m for m in value.messages):
        raise TypeError(f"{where}.step returned messages {str(value.messages)[:80]}; expected "
                        "{'role': ..., 'content': ...} dicts")
    return value


def builtin_environments() -> dict[str, type]:
    from posttrain.agents.builtin_envs import BUILTIN_ENVIRONMENTS

    return dict(BUILTIN_ENVIRONMENTS)


def load_environment(ref: str, base_dir: str | Path | None = None, key: str = "environment.name") -> type:
    """A built-in environment class by name, or a class by ``'module:Class'`` / ``'./file.py:Class'``;
    ConfigError when it lacks ``reset(row)`` or ``step(text)``."""
    builtins = builtin_environments()
    if ref in builtins:
        cls, origin = builtins[ref], f"built-in {ref!r}"
    elif ":" in ref:
        cls, origin = load_object(ref, f"{key}: environment", ConfigError, base_dir)
    else:
        raise ConfigError(f"{key}: unknown environment {ref!r}; expected a built-in "
                          f"({', '.join(sorted(builtins))}), 'module:Class' or './file.py:Class'")
    if not inspect.isclass(cls):
        raise ConfigError(f"{key}: {origin} is a {type(cls).__name__}; expected a class (one instance per episode)")
    for method, params in (("reset", "row"), ("step", "text")):
        fn = getattr(cls, method, None)
        if not callable(fn) or fn is getattr(Environment, method):
            raise ConfigError(f"{key}: environment {origin} has no {method}({params}) method; an environment "
                              "needs reset(row) -> first messages and step(text) -> StepResult")
    return cls
