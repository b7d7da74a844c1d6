"""Reading tool calls (hermes), and the chat template that renders tools, calls and results."""
from __future__ import annotations

import pytest

from posttrain.agents import HermesParser, ToolCall, load_tool, make_parser
from posttrain.errors import ConfigError
from posttrain.models.tokenizer import build_tokenizer

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>'


def test_one_call_and_its_text():
    turn = HermesParser().parse("Let me compute. " + CALL)
    assert turn.content == "Let me compute."
    assert turn.calls == [ToolCall("calculator", {"expression": "12*34"})] and turn.errors == []


def test_parallel_calls_and_string_arguments():
    second = '<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call>'
    turn = HermesParser().parse(CALL + "\n" + second)
    assert [c.name for c in turn.calls] == ["calculator", "python"]
    assert turn.calls[1].arguments == {"code": "print(1)"}


def test_no_call_is_a_final_answer():
    turn = HermesParser().parse("408")
    assert (turn.content, turn.calls, turn.errors, turn.attempted) == ("408", [], [], False)


@pytest.mark.parametrize(("text", "says"), [
    ('<tool_call>{"name": "calculator", "arguments": {</tool_call>', "is not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', 'needs a "name" string'),
    ('<tool_call>["calculator"]</tool_call>', 'needs a "name" string'),
    ('<tool_call>{"name": "calculator", "arguments": "{oops"}</tool_call>', "are not a JSON object"),
    ('<tool_call>{"name": "calculator"', "has no closing </tool_call>"),
])
def test_malformed_calls_become_errors_for_the_model(text, says):
    turn = HermesParser().parse(text)
    assert turn.calls == [] and len(turn.errors) == 1 and says in turn.errors[0]
    assert turn.attempted


def test_unknown_parser_names_the_key():
    with pytest.raises(ConfigError, match="stages.g.environment.parser: unknown tool-call parser 'xml'; expected one of hermes"):
        make_parser("xml", "stages.g.environment.parser")


def test_template_renders_what_the_parser_reads():
    """A structured tool call renders as the parser's format_call text, and parses back."""
    tok = build_tokenizer()
    calculator = load_tool("calculator")
    messages = [{"role": "user", "content": "What is 12*34?"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*34"}}}]},
                {"role": "tool", "content": "408"},
                {"role": "assistant", "content": "408"}]
    text = tok.apply_chat_template(messages, tools=[calculator.schema], tokenize=False)
    assert text == ("<|im_start|>system\ntools:\ncalculator(expression): Evaluate an arithmetic expression exactly.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 12*34?<|im_end|>\n"
                    "<|im_start|>assistant\n" + HermesParser().format_call("calculator", {"expression": "12*34"}) + "<|im_end|>\n"
                    "<|im_start|>tool\n408<|im_end|>\n"
                    "<|im_start|>assistant\n408<|im_end|>\n")
    assistant = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert HermesParser().parse(assistant).calls == [ToolCall("calculator", {"expression": "12*34"})]
    # assistant-only loss covers both assistant turns (the call and the answer), eos included
    out = tok.apply_chat_template(messages, tools=[calculator.schema], return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(marked) == HermesParser().format_call("calculator", {"expression": "12*34"}) + "<|im_end|>408<|im_end|>"


def test_template_without_tools_is_plain_chatml():
    tok = build_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
