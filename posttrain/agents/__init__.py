"""Agentic RL: tools, environments and multi-turn episodes trained by the same RL loop.

- :mod:`~posttrain.agents.tools`: typed functions as tools (schemas from their signatures), run
  with timeouts and failure accounting; built-ins ``calculator`` and ``python`` (sandboxed).
- :mod:`~posttrain.agents.toolcalls`: reading tool calls out of assistant turns (``hermes``).
- :mod:`~posttrain.agents.environment`: the environment contract (``reset(row)``, ``step(text)``).
- :mod:`~posttrain.agents.episodes`: token-in/token-out multi-turn rollouts on either engine.
"""
from __future__ import annotations

from posttrain.agents.environment import Environment, StepResult, Toolbox, load_environment
from posttrain.agents.toolcalls import HermesParser, ParsedTurn, ToolCall, make_parser
from posttrain.agents.tools import Tool, ToolArgumentError, ToolRunner, load_tool, load_tools

__all__ = [
    "Environment",
    "HermesParser",
    "ParsedTurn",
    "StepResult",
    "Tool",
    "ToolArgumentError",
    "ToolCall",
    "ToolRunner",
    "Toolbox",
    "load_environment",
    "load_tool",
    "load_tools",
    "make_parser",
]
