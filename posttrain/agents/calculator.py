"""The built-in ``calculator`` tool: exact arithmetic on a parsed expression, never ``eval``.

The expression is parsed with :mod:`ast` and only numbers, ``+ - * / // % **``, unary signs and
parentheses are walked; anything else (names, calls, attributes, strings) is refused. Sizes are
bounded before they are computed (an exponent above 64, an operand of more than 200 digits), so
``9**9**9`` is refused instead of hanging the trainer. Integers stay exact; ``/`` gives a float
unless the division is exact.
"""
from __future__ import annotations

import ast
import math
import operator

from posttrain.agents.tools import ToolArgumentError

MAX_EXPRESSION_CHARS = 200
MAX_DIGITS = 200
MAX_EXPONENT = 64

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _checked(value: float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolArgumentError("the result is not a finite number")
    if isinstance(value, int) and value and math.log10(abs(value)) >= MAX_DIGITS:
        raise ToolArgumentError(f"the result has more than {MAX_DIGITS} digits")
    return value


def _walk(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolArgumentError(f"exponent {right} is larger than {MAX_EXPONENT}")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ToolArgumentError("division by zero")
        if isinstance(node.op, ast.Div) and isinstance(left, int) and isinstance(right, int) and left % right == 0:
            return _checked(left // right)
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except (OverflowError, ZeroDivisionError) as exc:
            raise ToolArgumentError(str(exc)) from None
    raise ToolArgumentError(f"unsupported element {ast.unparse(node)!r}: use numbers, + - * / // % ** "
                            "and parentheses")


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression, or ToolArgumentError saying what is wrong.

    >>> evaluate("123 * 4567"), evaluate("(2 + 3) ** 2 / 5"), evaluate("7 / 2")
    (561741, 5, 3.5)
    """
    text = str(expression).strip()
    if not text:
        raise ToolArgumentError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolArgumentError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ToolArgumentError(f"{text!r} is not an arithmetic expression") from None
    return _walk(tree.body)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, e.g. "123 * 4567".
    """
    value = evaluate(expression)
    return repr(value) if isinstance(value, float) else str(value)
