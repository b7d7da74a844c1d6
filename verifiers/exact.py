"""``exact`` and ``normalized_match``: compare the whole completion with the ``answer`` column.

``answer`` may be one string or a list of acceptable strings.

>>> exact_match(" Paris\\n", answer="Paris").score
1.0
>>> normalized_match("the  Eiffel-Tower!", answer="The Eiffel Tower").score
1.0
"""
from __future__ import annotations

import re
import string
import unicodedata
from typing import Any

from posttrain.verification import VerifierResult, completion_text, verifier

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def _candidates(answer: Any) -> list[str]:
    return [str(a) for a in answer] if isinstance(answer, (list, tuple)) else [str(answer)]


@verifier(name="exact", description="Completion equals the answer column (surrounding "
                                     "whitespace ignored unless strip=false).")
def exact_match(completion: Any, answer: Any, *, strip: bool = True) -> VerifierResult:
    """Score 1 when the completion equals ``answer`` (or one of a list of answers)."""
    text = completion_text(completion)
    text = text.strip() if strip else text
    ok = any(text == (a.strip() if strip else a) for a in _candidates(answer))
    return VerifierResult(1.0 if ok else 0.0, ok, text, "exact match" if ok else "differs")


def normalize_text(text: str, remove_articles: bool = False) -> str:
    """Casefold, drop punctuation (replaced by spaces), optionally drop a/an/the, squeeze spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _PUNCT.sub(" ", text)
    if remove_articles:
        text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


@verifier(name="normalized_match", description="Completion equals the answer after case, "
                                                "whitespace and punctuation normalisation.")
def normalized_match(completion: Any, answer: Any, *,
                     remove_articles: bool = False) -> VerifierResult:
    """Score 1 when normalised completion and normalised ``answer`` are equal."""
    text = normalize_text(completion_text(completion), remove_articles)
    ok = any(text == normalize_text(a, remove_articles) for a in _candidates(answer))
    return VerifierResult(1.0 if ok else 0.0, ok, text, "match" if ok else "differs")
