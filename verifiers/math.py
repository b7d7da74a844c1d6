"""``math``: extract the final answer from a completion and check it against the ``answer`` column.

Extraction (first strategy that finds something wins, in the order given by ``extract``):

* ``boxed``: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled);
* ``answer_is``: the last "the answer is X" / "Answer: X" (to the end of that sentence/line);
* ``last_number``: the last number in the text (``-1,234.5``, ``3/4``).

Equivalence: equal after light normalisation, or equal as numbers within ``tolerance``
(relative to ``max(1, |answer|)``), or equivalent according to math-verify
(``math_verify.parse`` + ``verify``: fractions, radicals, sets, intervals, LaTeX vs plain).
math-verify uses SIGALRM for its own timeouts, which only works in the main thread; from pool
worker threads we disable them and rely on the pool's per-item timeout instead.

>>> math_verifier("so \\\\boxed{\\\\frac{1}{2}}", answer="0.5").passed
True
>>> math_verifier("The answer is 19.", answer=19).extracted
'19'
"""
from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from posttrain.verification import VerifierResult, completion_text, verifier

STRATEGIES = ("boxed", "answer_is", "last_number")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"(?i)(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}$")


def _last_boxed(text: str) -> str | None:
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


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(" ", "") if numbers else None


def extract_answer(text: str, strategies: Sequence[str] = STRATEGIES) -> str | None:
    """Return the answer found by the first strategy that finds one, or None."""
    functions = {"boxed": _last_boxed, "answer_is": _answer_is, "last_number": _last_number}
    for name in strategies:
        if name not in functions:
            raise ValueError(f"unknown extraction strategy {name!r}; expected one of {STRATEGIES}")
        found = functions[name](text)
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


def _math_verify_equal(gold: str, pred: str) -> bool:
    from math_verify import parse, verify  # heavy import (sympy): only when needed

    in_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if in_main else None
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    pred_parsed = parse(f"${pred}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def answers_match(pred: str, gold: str, tolerance: float = 1e-6,
                  use_math_verify: bool = True) -> tuple[bool, str]:
    """Return (equal?, how it was decided)."""
    if _normalize(pred) == _normalize(gold):
        return True, "same string"
    p, g = to_number(pred), to_number(gold)
    if p is not None and g is not None:
        if abs(p - g) <= tolerance * max(1.0, abs(g)):
            return True, f"numerically equal within {tolerance:g}"
        return False, f"{p:g} != {g:g}"
    if use_math_verify and _math_verify_equal(gold, pred):
        return True, "equivalent by math-verify"
    return False, "not equivalent"


def _gold_text(answer: Any) -> str:
    text = str(answer)
    boxed = _last_boxed(text)  # datasets such as MATH keep the boxed solution as the answer
    return boxed if boxed is not None else text


@verifier(name="math", description="Final answer (boxed / 'the answer is' / last number) "
                                    "equals the answer column (math-verify + tolerance).")
def math_verifier(completion: Any, answer: Any, *, extract: Sequence[str] | str = STRATEGIES,
                  tolerance: float = 1e-6, use_math_verify: bool = True) -> VerifierResult:
    """Score 1 when the extracted final answer equals ``answer``, else 0.

    ``extract``: strategies in order (a list or comma-separated string) among "boxed",
    "answer_is", "last_number". ``tolerance``: relative numeric tolerance.
    """
    strategies = [s.strip() for s in extract.split(",")] if isinstance(extract, str) else extract
    pred = extract_answer(completion_text(completion), strategies)
    if pred is None:
        return VerifierResult(0.0, False, None, "no answer found")
    ok, how = answers_match(pred, _gold_text(answer), float(tolerance), use_math_verify)
    return VerifierResult(1.0 if ok else 0.0, ok, pred, how)
