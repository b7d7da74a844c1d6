"""A batch reward function for the bundled arithmetic data, written against the public contract.

A batch reward function is ``f(completions, **columns) -> list[float]``, named in a recipe as
``{function: "posttrain.rewards.arithmetic:final_number_matches"}``; the engine loads it like any
user's function (:mod:`posttrain.common.plugins`). The ``math`` verifier does the same check per
item with a tolerance and LaTeX answers; this one is the batch form and the example to copy.

>>> final_number_matches(["It is 12.", "13", "no digits"], answer=["12", "12", "12"])
[1.0, 0.0, 0.0]
"""
from __future__ import annotations

import re
from typing import Any

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_number_matches(completions: list[str], answer: list[Any], **_: Any) -> list[float]:
    """1.0 where the last number in the completion equals ``answer`` (numerically), else 0.0.

    The built-in arithmetic reward (``data/arithmetic/rl.jsonl`` has an ``answer`` column).
    """
    scores = []
    for text, expected in zip(completions, answer):
        numbers = _NUMBER.findall(text)
        try:
            scores.append(float(bool(numbers) and float(numbers[-1]) == float(expected)))
        except (TypeError, ValueError):
            scores.append(0.0)
    return scores
