"""``multiple_choice``: extract the chosen letter (A-E by default) and compare with ``answer``.

Looked for, in order: ``\\boxed{B}``, "answer is (B)" / "Answer: B", a line that is only the
letter ("B", "(B)", "B."), then the last parenthesised letter "(B)" in the text. ``answer`` is a
letter or a 0-based option index.

>>> multiple_choice("Let's see... The answer is (C).", answer="C").passed
True
"""
from __future__ import annotations

import re
from typing import Any

from posttrain.verification import VerifierResult, completion_text, verifier


def extract_choice(text: str, choices: str = "ABCDE") -> str | None:
    """The chosen option letter, or None."""
    letters = re.escape(choices)
    patterns = [
        rf"\\boxed\{{\s*\(?([{letters}])\)?\s*\}}",
        rf"(?i:answer)\s*(?:is|:)?\s*:?\s*\**\(?([{letters}])\)?(?![A-Za-z])",
        rf"(?m)^\s*\(?([{letters}])[).:]?\s*$",
        rf"\(([{letters}])\)",
    ]
    for pattern in patterns:
        found = re.findall(pattern, text)
        if found:
            return found[-1]
    return None


@verifier(name="multiple_choice", description="Chosen option letter equals the answer column.")
def multiple_choice(completion: Any, answer: Any, *, choices: str = "ABCDE") -> VerifierResult:
    """Score 1 when the extracted letter equals ``answer`` (a letter, or an index into choices)."""
    gold = choices[answer] if isinstance(answer, int) and not isinstance(answer, bool) \
        else str(answer).strip().strip("()").upper()
    if gold not in choices:
        raise ValueError(f"answer {answer!r} is not one of the choices {choices!r}")
    picked = extract_choice(completion_text(completion), choices)
    ok = picked == gold
    reason = "no choice found" if picked is None else ("correct" if ok else f"expected {gold}")
    return VerifierResult(1.0 if ok else 0.0, ok, picked, reason)
