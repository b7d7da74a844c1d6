"""Reading tool calls out of an assistant turn; one parser per model family, chosen by name.

``hermes`` (Hermes 2 / Qwen2.5 / Qwen3 style, the format posttrain's own chat template renders):
each call is ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` inside the assistant's
text; several blocks are several (parallel) calls. A block that is not such a JSON object, or a
``<tool_call>`` without its closing tag, is a malformed call: it becomes an error message for the
model, never an exception.

>>> turn = HermesParser().parse('Let me compute. <tool_call>{"name": "calculator", '
...                             '"arguments": {"expression": "2*3"}}</tool_call>')
>>> turn.content, turn.calls, turn.errors
('Let me compute.', [ToolCall(name='calculator', arguments={'expression': '2*3'})], [])
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from posttrain.errors import ConfigError


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Any


@dataclass
class ParsedTurn:
    """An assistant turn split into its text and its calls; ``errors`` has one message per
    malformed call (for the model to read)."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> bool:
        """Whether the turn tried to call a tool (well-formed or not)."""
        return bool(self.calls or self.errors)


class ToolCallParser(Protocol):
    name: ClassVar[str]

    def parse(self, text: str) -> ParsedTurn: ...

    def format_call(self, name: str, arguments: Any) -> str: ...


class HermesParser:
    """``<tool_call>{json}</tool_call>`` blocks (see the module docstring)."""

    name: ClassVar[str] = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    _BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def parse(self, text: str) -> ParsedTurn:
        calls: list[ToolCall] = []
        errors: list[str] = []
        for block in self._BLOCK.findall(text):
            call, error = self._call(block.strip())
            if call is not None:
                calls.append(call)
            else:
                errors.append(error)
        rest = self._BLOCK.sub("", text)
        if self.OPEN in rest:
            errors.append(f"Error: a {self.OPEN} has no closing {self.CLOSE}")
            rest = rest[:rest.index(self.OPEN)]
        return ParsedTurn(content=rest.strip(), calls=calls, errors=errors)

    @staticmethod
    def _call(block: str) -> tuple[ToolCall | None, str]:
        try:
            payload = json.loads(block)
        except json.JSONDecodeError as exc:
            return None, f"Error: the tool call {block[:80]!r} is not valid JSON ({exc.msg})"
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            return None, f"Error: the tool call {block[:80]!r} needs a \"name\" string and an \"arguments\" object"
        arguments = payload.get("arguments", {})
        if isinstance(arguments, str):  # some models emit the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None, f"Error: the arguments of {payload['name']} are not a JSON object"
        return ToolCall(payload["name"], arguments), ""

    def format_call(self, name: str, arguments: Any) -> str:
        """The text of one call, as the chat template renders a structured ``tool_calls`` entry."""
        return f"{self.OPEN}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{self.CLOSE}"


PARSERS: dict[str, type] = {"hermes": HermesParser}


def make_parser(name: str, key: str = "parser") -> ToolCallParser:
    """The parser registered as ``name``."""
    if name not in PARSERS:
        raise ConfigError(f"{key}: unknown tool-call parser {name!r}; expected one of {', '.join(sorted(PARSERS))}")
    return PARSERS[name]()
