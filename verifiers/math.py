"""``math``: is the completion's final answer equal to the ``answer`` column? Decided by math-verify.

Extraction and comparison are math-verify's own (Hugging Face, github.com/huggingface/Math-Verify):
``parse`` reads the answer out of the whole completion (LaTeX environments, ``\\boxed{}`` and
several boxes at once, "final answer is" anchors, plain expressions, sets, intervals, equations
with a left-hand side, ``\\text{}`` answers, thousands separators, locale decimals) and
``verify(gold, pred)`` compares. Where this verifier differs from calling
``verify(parse(gold), parse(completion))`` yourself:

* ``\\boxed{}`` first: the completion is parsed with ``LatexExtractionConfig(boxed_match_priority=0)``
  (math-verify's default tries "final answer is ..." anchors before boxes), as TRL's and
  open-r1's accuracy rewards do.
* The gold answer is parsed once per distinct text (a group of 8 completions shares it), and a
  verdict is computed once per distinct (gold, extracted answer) pair (completions of a group
  often agree; math-verify already memoises the parse of a LaTeX string). A gold answer that is
  bare LaTeX without delimiters (``\\sqrt{2}/2``, ``(1, +\\infty)``, ``(2, 2), (6, 2)``) is parsed
  inside ``$...$``; math-verify would read only a fragment of such a string (or nothing). A plain
  number (``1,000``, ``1,22``, ``50%``) is parsed as it is, as math-verify does.
* Fast path: when the gold and the extracted answer are both plain integers or decimals (at most
  15 digits in all, 6 after the point) they are compared exactly, with the same verdict
  math-verify gives (tests/verification/test_math_verifier.py checks that on random pairs).
* ``tolerance``: when given, two answers that evaluate to numbers are equal within that relative
  tolerance (of ``max(1, |gold|)``); math-verify's own rule is rounding to 6 decimals.
* Extraction or parsing failures (and math-verify errors) give ``passed=False`` with a reason;
  they never raise.

``extract`` chooses where the answer is read: math-verify targets ``latex`` (LaTeX, boxed first),
``expr`` (plain expressions and numbers) and ``boxed`` (only ``\\boxed{}``, for R1-style data), or
plain-text strategies for data that is not LaTeX (see verifiers/answers.py): ``answer_is``,
``last_line``, ``last_number``, and ``boxed_text`` (the last box's text). Strategies are tried in
order; adjacent math-verify targets form one ``parse`` call (so their priorities interact as in
math-verify). The default ``latex, expr`` is math-verify's default extraction.

math-verify's own timeouts use SIGALRM, which only works in a main thread; in a worker thread
they are off and the pool's per-item timeout (or its process executor, which kills) applies.

>>> math_verifier("so \\\\boxed{\\\\frac{10}{9}}", answer="10/9").passed
True
>>> math_verifier("We get $[0,1)$.", answer="$[0,1)$").passed
True
>>> math_verifier("ones 3+4=7, so 17", answer=17, extract="last_number").reason
'equal as plain numbers'
"""
from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

from posttrain.verifiers.answers import extract_answer, last_boxed

from posttrain.verification import VerifierResult, completion_text, verifier

MATH_VERIFY_TARGETS = ("latex", "expr", "boxed")
TEXT_TARGETS = {"answer_is": "answer_is", "last_line": "last_line", "last_number": "last_number",
                "boxed_text": "boxed"}
DEFAULT_EXTRACT = ("latex", "expr")
_PLAIN_NUMBER = re.compile(r"-?\d{1,15}(?:\.\d{1,6})?")
_MAX_DIGITS = 15  # beyond, math-verify's floats lose digits (and verdicts we would not match)
# Numbers math-verify's expression parser reads as they are: thousands separators, locale decimals.
_NUMBER_LIKE = re.compile(r"-?[1-9]\d{0,2}(?:[ ,]\d{3})+(?:\.\d+)?|-?\d+(?:[.,]\d+)?|-?\.\d+")
_DELIMITERS = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")


def _timeout() -> int | None:
    """math-verify's SIGALRM timeouts (seconds) where they work: only in the main thread."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=16)
def _configs(targets: tuple[str, ...]) -> tuple[Any, ...]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig  # sympy: import lazily

    made = {"latex": LatexExtractionConfig(boxed_match_priority=0),
            "expr": ExprExtractionConfig(),
            "boxed": LatexExtractionConfig(boxed_match_priority=0,
                                           try_extract_without_anchor=False)}
    return tuple(made[t] for t in targets)


def _parse(text: str, targets: tuple[str, ...] = DEFAULT_EXTRACT) -> list[Any]:
    from math_verify import parse

    try:
        return list(parse(text, extraction_config=list(_configs(targets)),
                          parsing_timeout=_timeout()))
    except Exception:  # noqa: BLE001 - math-verify's timeouts and parser bugs: "not parsed"
        return []


def parse_span(text: str) -> list[Any]:
    """Parse an answer that is already isolated (a gold answer, an extracted string).

    A plain number is parsed as it is; bare LaTeX without delimiters inside ``$...$``; either
    way, the other form when the first gives nothing.
    """
    text = text.strip()
    wrapped = f"${text}$"
    if _NUMBER_LIKE.fullmatch(text) or _DELIMITERS.search(text):
        first, second = text, wrapped
    else:
        first, second = wrapped, text
    return _parse(first) or (_parse(second) if second != first else [])


@lru_cache(maxsize=4096)
def parse_gold(answer: str) -> tuple[Any, ...]:
    """The gold answer parsed once per distinct text (completions of one prompt share it)."""
    return tuple(parse_span(answer))


def _answer_string(parsed: Sequence[Any]) -> str | None:
    """The extracted text math-verify returns after the sympy value (``fallback_mode``)."""
    strings = [p for p in parsed if isinstance(p, str)]
    return strings[-1] if strings else (str(parsed[0]) if parsed else None)


def _plain_number(parsed: Sequence[Any]) -> Decimal | None:
    """The answer as an exact Decimal when it is a plain integer/decimal (value agrees), else None."""
    text = _answer_string(parsed)
    if text is None or not _PLAIN_NUMBER.fullmatch(text.strip()) \
            or sum(c.isdigit() for c in text) > _MAX_DIGITS:
        return None
    number = Decimal(text.strip())
    for value in parsed:
        if not isinstance(value, str):
            try:
                if Decimal(str(value)) != number:
                    return None  # e.g. a percentage: the text says 50, the value is 1/2
            except ArithmeticError:
                return None
    return number


def plain_number_verdict(gold: Sequence[Any], pred: Sequence[Any]) -> bool | None:
    """Exact verdict when both are plain integers/decimals (math-verify agrees), else None.

    >>> plain_number_verdict(["27"], ["27.0"]), plain_number_verdict(["27"], ["x"])
    (True, None)
    """
    g, p = _plain_number(gold), _plain_number(pred)
    return None if g is None or p is None else g == p


def _within(gold: Any, pred: Any, tolerance: float) -> bool | None:
    """Numeric verdict within a relative tolerance when both evaluate to real numbers."""
    try:
        g, p = complex(gold), complex(pred)
    except (TypeError, ValueError):
        return None
    if g.imag or p.imag:
        return None
    return abs(p.real - g.real) <= tolerance * max(1.0, abs(g.real))


def _compare(gold: tuple[Any, ...], pred: Sequence[Any], tolerance: float | None) -> tuple[bool, str]:
    gold_text, pred_text = _answer_string(gold), _answer_string(pred)
    plain = plain_number_verdict(gold, pred) if tolerance is None else None
    if plain is not None:
        return plain, "equal as plain numbers" if plain else f"{pred_text} != {gold_text}"
    if len(pred) == 1 and isinstance(pred[0], str):
        pred = parse_span(pred[0]) or pred  # a plain-text answer the fast path did not decide
    if tolerance is not None and gold and pred:
        close = _within(gold[0], pred[0], tolerance)
        if close is not None:
            return close, (f"numerically equal within {tolerance:g}" if close
                           else f"{pred_text} != {gold_text} (tolerance {tolerance:g})")
    from math_verify import verify

    try:
        same = bool(verify(list(gold), list(pred), timeout_seconds=_timeout()))
    except Exception as exc:  # noqa: BLE001 - a math-verify failure is a "not equal" verdict
        return False, f"math-verify failed: {type(exc).__name__}"
    return same, "equivalent by math-verify" if same else "not equivalent (math-verify)"


_VERDICTS: dict[tuple, tuple[bool, str]] = {}  # (gold text, parsed answer, tolerance) -> verdict
_MAX_VERDICTS = 1 << 16


def _targets(extract: Sequence[str] | str) -> list[tuple[str, ...]]:
    """Group the strategies: runs of math-verify targets, each text strategy alone."""
    names = [s.strip() for s in extract.split(",")] if isinstance(extract, str) else list(extract)
    groups: list[tuple[str, ...]] = []
    for name in names:
        if name in MATH_VERIFY_TARGETS:
            if groups and groups[-1][0] in MATH_VERIFY_TARGETS:
                groups[-1] = (*groups[-1], name)
            else:
                groups.append((name,))
        elif name in TEXT_TARGETS:
            groups.append((name,))
        else:
            raise ValueError(f"math verifier: unknown extract strategy {name!r}; expected any of "
                             f"{', '.join(MATH_VERIFY_TARGETS + tuple(TEXT_TARGETS))}")
    return groups


def extract_prediction(text: str, extract: Sequence[str] | str = DEFAULT_EXTRACT) -> list[Any]:
    """The completion's answer parsed by math-verify (``[value, text]``), or [] if none."""
    for group in _targets(extract):
        if group[0] in TEXT_TARGETS:
            found = extract_answer(text, (TEXT_TARGETS[group[0]],))
            # Parsed (by math-verify) only when the fast path cannot decide: see _compare.
            parsed = [found] if found is not None else []
        elif "boxed" in group and len(group) == 1 and last_boxed(text) is None:
            parsed = []
        else:
            parsed = _parse(text, group)
        if parsed:
            return parsed
    return []


@verifier(name="math", executor="process",  # sympy holds the GIL: processes scale with cores
          description="Final answer equals the answer column, by math-verify "
                      "(extraction and comparison; boxed first; gold parsed once).")
def math_verifier(completion: Any, answer: Any, *, extract: Sequence[str] | str = DEFAULT_EXTRACT,
                  tolerance: float | None = None) -> VerifierResult:
    """Score 1 when the completion's final answer equals ``answer`` (see the module docstring).

    ``extract``: strategies in order (a list or comma-separated string). ``tolerance``: relative
    numeric tolerance; None (default) keeps math-verify's rule.
    """
    text = completion_text(completion)
    answer_text = "" if answer is None else str(answer)
    if not answer_text.strip():
        return VerifierResult(0.0, False, None, "the answer column is empty")
    gold = parse_gold(answer_text)
    if not gold:
        return VerifierResult(0.0, False, None, f"math-verify cannot parse the answer {answer_text!r:.60}")
    pred = extract_prediction(text, extract)
    if not pred:
        return VerifierResult(0.0, False, None, "no answer found")
    tolerance = None if tolerance is None else float(tolerance)
    key = (answer_text, tuple(map(str, pred)), tolerance)
    if key not in _VERDICTS:  # the completions of a group often give the same answer
        if len(_VERDICTS) >= _MAX_VERDICTS:
            _VERDICTS.clear()
        _VERDICTS[key] = _compare(gold, pred, tolerance)
    ok, how = _VERDICTS[key]
    return VerifierResult(1.0 if ok else 0.0, ok, _answer_string(pred), how)
