"""Tools: typed Python functions with a docstring that a model calls during an episode.

A tool is a plain function whose JSON schema comes from its signature and docstring
(transformers' ``get_json_schema``; no second schema is written by hand). A recipe names tools the
way it names verifiers: a built-in name (``calculator``, ``python``), ``'module:attr'`` or
``'./file.py:fn'``.

Calls run on :class:`ToolRunner`'s worker threads with a per-call timeout. What the model did
wrong (unknown tool, missing or unexpected arguments, a :class:`ToolArgumentError` raised by the
tool, e.g. "division by zero") is answered with an error message and counted as ``rejected``; what
the tool did wrong (it raised anything else, hung past ``timeout_s``, or returned something that is
neither text nor JSON) is answered the same way and counted as a ``failure``. When more than
``max_failure_rate`` of a tool's calls fail (judged once ``min_calls`` are known) the runner raises
:class:`~posttrain.errors.ToolError` naming the tool, the failure and an example call, as the
verifier pool does for verifiers.

>>> tool = load_tool("calculator")
>>> tool.schema["function"]["parameters"]["required"]
['expression']
>>> with ToolRunner([tool], timeout_s=5) as runner:
...     runner.call("calculator", {"expression": "12 * 34"}).content
'408'
"""
from __future__ import annotations

import inspect
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.common.plugins import load_object
from posttrain.errors import ConfigError, ToolError
from posttrain.verification.workers import AbandoningWorkers, StuckWorkersError, Task

logger = logging.getLogger(__name__)

#: Tool results longer than this are cut (head kept, the cut said) before they reach the model.
MAX_RESULT_CHARS = 2000


class ToolArgumentError(ValueError):
    """Raised by a tool when the model's arguments are wrong (the message goes back to the model);
    counted as a rejected call, not as a failure of the tool."""


@dataclass(frozen=True)
class Tool:
    """A callable with its JSON schema (``{"type": "function", "function": {...}}``)."""

    name: str
    fn: Callable[..., Any]
    schema: dict[str, Any]
    origin: str

    @property
    def parameters(self) -> dict[str, Any]:
        return self.schema["function"].get("parameters", {}).get("properties", {})

    @property
    def required(self) -> list[str]:
        return list(self.schema["function"].get("parameters", {}).get("required", []))


def builtin_tools() -> dict[str, Callable[..., Any]]:
    """Name -> function of the tools that ship with posttrain."""
    from posttrain.agents.calculator import calculator
    from posttrain.agents.python_tool import python

    return {"calculator": calculator, "python": python}


def tool_from_function(fn: Callable[..., Any], origin: str, where: str = "tool") -> Tool:
    """Wrap ``fn``; ConfigError when its signature lacks type hints or its docstring lacks an
    ``Args:`` line per parameter (what the schema is made of)."""
    from transformers.utils import get_json_schema

    if not callable(fn) or inspect.isclass(fn):
        raise ConfigError(f"{where}: {origin} is a {type(fn).__name__}; expected a function")
    try:
        schema = get_json_schema(fn)
    except Exception as exc:  # noqa: BLE001 - TypeHintParsingException, DocstringParsingException
        raise ConfigError(f"{where}: {origin} cannot be described to the model: {exc}. A tool needs a type "
                          "hint on every parameter and a docstring with a description and an 'Args:' "
                          "section naming each parameter") from None
    return Tool(name=schema["function"]["name"], fn=fn, schema=schema, origin=origin)


def load_tool(ref: str, base_dir: str | Path | None = None, where: str = "tool") -> Tool:
    """A built-in tool by name, or a function by ``'module:attr'`` / ``'./file.py:fn'``."""
    builtins = builtin_tools()
    if ref in builtins:
        return tool_from_function(builtins[ref], f"posttrain built-in {ref!r}", where)
    if ":" not in ref:
        raise ConfigError(f"{where}: unknown tool {ref!r}; expected a built-in ({', '.join(sorted(builtins))}), "
                          "'module:function' or './file.py:function'")
    fn, origin = load_object(ref, f"{where}: tool", ConfigError, base_dir)
    return tool_from_function(fn, origin, where)


def load_tools(refs: Sequence[str], base_dir: str | Path | None = None, key: str = "tools") -> list[Tool]:
    """Every tool of a recipe's list; ConfigError on a duplicate name."""
    tools = [load_tool(ref, base_dir, f"{key}[{i}]") for i, ref in enumerate(refs)]
    seen: dict[str, str] = {}
    for tool in tools:
        if tool.name in seen:
            raise ConfigError(f"{key}: two tools are named {tool.name!r} ({seen[tool.name]} and {tool.origin}); "
                              "the model calls tools by name")
        seen[tool.name] = tool.origin
    return tools


_JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
               "array": (list,), "object": (dict,)}


def argument_problems(tool: Tool, arguments: Any) -> str | None:
    """What is wrong with a call's arguments (missing, unexpected, wrong JSON type), or None."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    missing = [p for p in tool.required if p not in arguments]
    unexpected = [a for a in arguments if a not in tool.parameters]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected)}"] if unexpected else [])
        return f"{'; '.join(parts)} (parameters: {', '.join(tool.parameters) or 'none'})"
    for name, value in arguments.items():
        expected = tool.parameters[name].get("type")
        kinds = _JSON_TYPES.get(expected) if isinstance(expected, str) else None
        if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            return f"argument {name!r} must be a {expected}, got {json.dumps(value)[:50]}"
    return None


def result_text(value: Any) -> str:
    """A tool's return value as the text the model reads: str as is, JSON-serialisable values as
    JSON; TypeError otherwise."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            raise TypeError(f"returned a {type(value).__name__}, which is neither text nor JSON") from None
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"... [cut: {len(text) - MAX_RESULT_CHARS} more characters]"
    return text


@dataclass(frozen=True)
class ToolResult:
    """One call's outcome: ``status`` is "ok", "rejected" (the model's fault), "error" or "timeout"
    (the tool's fault); ``content`` is what the model reads back."""

    name: str
    status: str
    content: str
    seconds: float = 0.0


@dataclass
class ToolStats:
    """Per-tool counts over a runner's life (or since the last ``take_stats``)."""

    calls: int = 0
    rejected: int = 0
    failures: int = 0
    timeouts: int = 0
    seconds: float = 0.0
    example: str | None = field(default=None, repr=False)


class ToolRunner:
    """Runs tool calls with a timeout each on worker threads, counts outcomes per tool, and stops
    the stage (ToolError) when a tool fails too often."""

    def __init__(self, tools: Sequence[Tool], timeout_s: float = 10.0, workers: int = 4,
                 max_failure_rate: float = 0.5, min_calls: int = 8):
        self.tools = {t.name: t for t in tools}
        self.timeout_s = float(timeout_s)
        self.max_failure_rate, self.min_calls = max_failure_rate, min_calls
        self._workers = AbandoningWorkers(workers, "posttrain-tool", max_abandoned=max(4, 2 * workers))
        self._lock = threading.Lock()
        self.stats: dict[str, ToolStats] = {}
        self.lifetime: dict[str, ToolStats] = {}

    def __enter__(self) -> ToolRunner:  # noqa: PYI034 - not meant for subclassing
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._workers.close()

    def call(self, name: str, arguments: Any) -> ToolResult:
        """Run one call; never raises for the tool's or the model's mistakes (only ToolError when
        the failure rate is exceeded)."""
        return self.call_many([(name, arguments)])[0]

    def call_many(self, calls: Sequence[tuple[str, Any]], extra: Sequence[Tool] = ()) -> list[ToolResult]:
        """Run calls concurrently (each with its own timeout) and return their results in order.
        ``extra``: tools of this call only (an environment instance's bound methods)."""
        results: list[ToolResult | None] = [None] * len(calls)
        tasks: list[tuple[int, Task]] = []
        tools = {**self.tools, **{t.name: t for t in extra}}
        for i, (name, arguments) in enumerate(calls):
            tool = tools.get(name)
            if tool is None:
                known = ", ".join(sorted(tools)) or "none"
                # counted under "unknown": names the model makes up must not each become a metric
                results[i] = ToolResult("unknown", "rejected", f"Error: unknown tool {name!r} (tools: {known})")
                continue
            problem = argument_problems(tool, arguments)
            if problem:
                results[i] = ToolResult(name, "rejected", f"Error: {name}: {problem}")
                continue
            tasks.append((i, Task(lambda fn=tool.fn, kw=dict(arguments): result_text(fn(**kw)), self.timeout_s)))
        try:
            self._workers.run_tasks([task for _, task in tasks])
        except StuckWorkersError as exc:
            names = sorted({calls[i][0] for i, _ in tasks})
            raise ToolError(f"tool {', '.join(names)}: {exc}; a call hangs past its timeout of {self.timeout_s:g} s "
                            f"and keeps doing so. Example call: {json.dumps(dict(zip(('name', 'arguments'), calls[tasks[0][0]])), default=str)[:300]}") from None
        for i, task in tasks:
            results[i] = self._result(calls[i][0], task)
        self._account(calls, results, tools)
        return results  # type: ignore[return-value]

    def _result(self, name: str, task: Task) -> ToolResult:
        kind, value = task.outcome
        if kind == "ok":
            return ToolResult(name, "ok", value, task.duration_s)
        if kind == "timeout":
            return ToolResult(name, "timeout", f"Error: {name} did not answer within {self.timeout_s:g} s", task.duration_s)
        if isinstance(value, ToolArgumentError):
            return ToolResult(name, "rejected", f"Error: {name}: {value}", task.duration_s)
        return ToolResult(name, "error", f"Error: {name} failed: {type(value).__name__}: {value}", task.duration_s)

    def _account(self, calls, results: list[ToolResult], tools: dict[str, Tool]) -> None:
        with self._lock:
            for (name, arguments), result in zip(calls, results):
                for table in (self.stats, self.lifetime):
                    stats = table.setdefault(result.name, ToolStats())
                    stats.calls += 1
                    stats.seconds += result.seconds
                    stats.rejected += result.status == "rejected"
                    stats.timeouts += result.status == "timeout"
                    if result.status in ("error", "timeout"):
                        stats.failures += 1
                        if stats.example is None:
                            stats.example = (f"{result.content} (arguments: "
                                             f"{json.dumps(arguments, default=str)[:200]})")
                            logger.warning("tool %s: %s", result.name, stats.example)
            for name, stats in self.lifetime.items():
                if stats.calls >= self.min_calls and stats.failures > self.max_failure_rate * stats.calls:
                    raise ToolError(f"tool {name!r} ({tools[name].origin if name in tools else 'unknown'}) "
                                    f"failed {stats.failures} of {stats.calls} calls, more than max_failure_rate "
                                    f"{self.max_failure_rate:g}. Example: {stats.example}")

    def take_stats(self) -> dict[str, ToolStats]:
        """The counts since the last call (per tool), and reset them."""
        with self._lock:
            stats, self.stats = self.stats, {}
        return stats
