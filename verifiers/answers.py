"""Plain-text answer extraction shared by ``math`` (its text strategies) and ``majority_vote``.

These read a final answer out of text that is not LaTeX: model output such as "ones 3+4=7, so
17" or "The answer is 19." Each strategy returns the answer's text, or None:

* ``boxed``: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled);
* ``answer_is``: the last "the answer is X" / "Answer: X" (to the end of that sentence/line);
* ``last_line``: the last non-empty line, without a trailing full stop;
* ``last_number``: the last number in the text (``-1,234.5``, ``3/4``).

>>> extract_answer("We add. The answer is 19.", ("answer_is",))
'19'
>>> extract_answer("ones 3+4=7, so 17", ("boxed", "answer_is", "last_number"))
'17'
"""
from __future__ import annotations

import re
from collections.abc import Sequence

TEXT_STRATEGIES = ("boxed", "answer_is", "last_line", "last_number")
#: What ``majority_vote`` (and the old ``math`` default) tries, in order.
PLAIN_CHAIN = ("boxed", "answer_is", "last_number")

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"(?i)(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}$")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox``), or None."""
    found = None
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found = text[start:i]
                break
    return found


def _answer_is(text: str) -> str | None:
    matches = _ANSWER_IS.findall(text)
    if not matches:
        return None
    tail = matches[-1].strip()
    # The sentence ends at ". " or a final "." that is not a decimal point.
    tail = re.split(r"\.\s|\.$|\n", tail, maxsplit=1)[0]
    tail = tail.strip().strip("*").strip()
    if tail.startswith("$") and tail.endswith("$") and len(tail) > 1:
        tail = tail.strip("$").strip()
    return tail or None


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removesuffix(".").strip() if lines else None


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(" ", "") if numbers else None


_FUNCTIONS = {"boxed": last_boxed, "answer_is": _answer_is, "last_line": _last_line,
              "last_number": _last_number}


def extract_answer(text: str, strategies: Sequence[str] = PLAIN_CHAIN) -> str | None:
    """Return the answer found by the first strategy that finds one, or None."""
    for name in strategies:
        if name not in _FUNCTIONS:
            raise ValueError(f"unknown extraction strategy {name!r}; expected one of "
                             f"{', '.join(TEXT_STRATEGIES)}")
        found = _FUNCTIONS[name](text)
        if found is not None and found.strip():
            return found.strip()
    return None


def _normalize(text: str) -> str:
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\(?:left|right|,|;|!|\s)", "", text)
    return re.sub(r"\s+", "", text).rstrip(".")


def to_number(text: str) -> float | None:
    """Parse plain numbers, thousands separators, "a/b", \\frac{a}{b} and percentages."""
    s = _normalize(text).replace("\\%", "%").replace("\\$", "")
    s = s.removeprefix("$")
    percent = s.endswith("%")
    s = s.rstrip("%")
    frac = _FRAC.match(s)
    try:
        if frac:
            value = float(frac.group(2)) / float(frac.group(3)) * (-1 if frac.group(1) else 1)
        elif re.fullmatch(r"-?\d+(?:\.\d+)?/-?\d+(?:\.\d+)?", s):
            num, den = s.split("/")
            value = float(num) / float(den)
        elif re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d*)(?:\.\d+)?(?:e-?\d+)?", s) and s:
            value = float(s.replace(",", ""))
        else:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value
