"""``regex`` and ``format``: does the completion match a pattern?

``format`` defaults to the reasoning template ``<think>...</think><answer>...</answer>`` (the
whole completion, whitespace around tags allowed), as used by R1-style format rewards. Both take
a ``pattern`` option; a named group ``answer`` is returned as the extracted text.

>>> format_reward("<think>2+2=4</think> <answer>4</answer>").extracted
'4'
>>> regex_match("id: 123", pattern=r"id: \\d+").score
1.0
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from posttrain.verification import VerifierResult, completion_text, verifier

THINK_ANSWER = r"\s*<think>.*?</think>\s*<answer>(?P<answer>.*?)</answer>\s*"
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


@lru_cache(maxsize=256)
def _compile(pattern: str, flags: str) -> re.Pattern:
    unknown = set(flags) - set(_FLAGS)
    if unknown:
        raise ValueError(f"unknown regex flags {''.join(sorted(unknown))!r}; expected from 'imsx'")
    value = 0
    for f in flags:
        value |= _FLAGS[f]
    return re.compile(pattern, value)


def _match(text: str, pattern: str, flags: str, mode: str) -> VerifierResult:
    compiled = _compile(pattern, flags)
    if mode == "fullmatch":
        m = compiled.fullmatch(text)
    elif mode == "search":
        m = compiled.search(text)
    else:
        raise ValueError(f"mode={mode!r}; expected 'fullmatch' or 'search'")
    if m is None:
        return VerifierResult(0.0, False, None, f"no {mode} of {pattern!r}")
    extracted = m.group("answer") if "answer" in compiled.groupindex else m.group(0)
    return VerifierResult(1.0, True, extracted, "matched")


@verifier(name="regex", description="Completion matches the `pattern` option (search or "
                                     "fullmatch).")
def regex_match(completion: Any, *, pattern: str, flags: str = "s",
                mode: str = "search") -> VerifierResult:
    """Score 1 when ``pattern`` is found (``mode="search"``) or matches all of the completion."""
    return _match(completion_text(completion), pattern, flags, mode)


@verifier(name="format", description="Whole completion follows <think>...</think>"
                                      "<answer>...</answer> (or the `pattern` option).")
def format_reward(completion: Any, *, pattern: str = THINK_ANSWER,
                  flags: str = "s") -> VerifierResult:
    """Score 1 when the whole completion matches the format ``pattern``."""
    return _match(completion_text(completion), pattern, flags, "fullmatch")
