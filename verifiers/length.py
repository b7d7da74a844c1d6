"""``length``: a length-shaping score in [0, 1].

``mode="target"``: ``score = max(0, 1 - |L - target| / scale)`` (``scale`` defaults to
``target``): 1 at the target length, falling linearly to 0 at ``target +- scale``.

``mode="overlong"``: DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), shifted from
[-1, 0] to [0, 1]. DAPO defines, with ``L_max = max_length`` and ``L_cache = cache_length``::

    R(y) = 0                              if |y| <= L_max - L_cache
         = ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
         = -1                             if |y| > L_max

and adds R to the correctness reward. Our verifiers must return [0, 1], so this returns
``score = 1 + R``: 1 up to ``L_max - L_cache``, linearly down to 0 at ``L_max``, 0 beyond.
To reproduce DAPO exactly, combine it with weight 1 and subtract 1 (reward = correct +
(score - 1)), which a weighted reward sum with an offset of -1 does.

Length ``L`` is counted in ``unit``: "chars", "words" (whitespace-separated), or "tokens" (then
the sample must carry a ``num_tokens`` column, e.g. filled by the rollout engine).

>>> length_reward("x" * 90, mode="overlong", max_length=100, cache_length=20).score
0.5
"""
from __future__ import annotations

from typing import Any

from posttrain.verification import VerifierResult, completion_text, verifier


def measure(completion: Any, unit: str, num_tokens: int | None) -> int:
    """Length of the completion in ``unit``."""
    if unit == "tokens":
        if num_tokens is None:
            raise ValueError("unit='tokens' needs a `num_tokens` column")
        return int(num_tokens)
    text = completion_text(completion)
    if unit == "chars":
        return len(text)
    if unit == "words":
        return len(text.split())
    raise ValueError(f"unit={unit!r}; expected 'chars', 'words' or 'tokens'")


def overlong_score(length: int, max_length: int, cache_length: int) -> float:
    """1 + DAPO's R_length (see module docstring)."""
    if not 0 < cache_length <= max_length:
        raise ValueError(f"need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
    if length <= max_length - cache_length:
        return 1.0
    if length <= max_length:
        return 1.0 + ((max_length - cache_length) - length) / cache_length
    return 0.0


@verifier(name="length", description="Length shaping: linear penalty around a target, or DAPO's "
                                       "overlong penalty mapped to [0, 1].")
def length_reward(completion: Any, *, mode: str = "target", target: int | None = None,
                  scale: float | None = None, max_length: int | None = None,
                  cache_length: int | None = None, unit: str = "chars",
                  num_tokens: int | None = None) -> VerifierResult:
    """Score the completion's length (see module docstring for the two modes)."""
    length = measure(completion, unit, num_tokens)
    if mode == "target":
        if target is None or target <= 0:
            raise ValueError("mode='target' needs a positive `target` option")
        width = float(scale if scale is not None else target)
        score = max(0.0, 1.0 - abs(length - target) / width)
        reason = f"{length} {unit}, target {target}"
    elif mode == "overlong":
        if max_length is None or cache_length is None:
            raise ValueError("mode='overlong' needs `max_length` and `cache_length` options")
        score = overlong_score(length, int(max_length), int(cache_length))
        reason = f"{length} {unit}, soft limit {max_length - cache_length}, hard {max_length}"
    else:
        raise ValueError(f"mode={mode!r}; expected 'target' or 'overlong'")
    return VerifierResult(score, None, str(length), reason)
