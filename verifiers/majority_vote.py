"""``majority_vote``: label-free reward from agreement within a prompt's group (TTRL).

Test-Time Reinforcement Learning (Zuo et al., arXiv 2504.16084, sec. 3) estimates a label for
each prompt by majority vote over the answers of its sampled completions, then rewards each
completion 1 if its answer equals that estimate, else 0. Answers are extracted with
the plain-text strategies of verifiers/answers.py (last box, "the answer is", last number); to vote, they are keyed by numeric value when they parse as a number,
else by their whitespace-free text (TTRL compares with math-verify; grouping by exact keys is
cheaper and deterministic). Ties go to the answer seen first. Completions without an answer
score 0 and do not vote.

The group of each completion comes from a ``group`` column (any hashable id, e.g. the prompt
index) or from the ``group_size`` option (consecutive runs of that size). As a reward channel
of an RL stage the stage binds its own ``group_size`` (posttrain.rl.rewards); set it by hand only
elsewhere. It is a batched verifier: the pool hands it the whole batch, which must contain whole
groups.

>>> [r.score for r in majority_vote(["=> 4", "so 4", "5"], group_size=3)]
[1.0, 1.0, 0.0]
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from posttrain.verifiers.answers import PLAIN_CHAIN, extract_answer, to_number

from posttrain.verification import VerifierResult, completion_text, verifier


def vote_key(answer: str) -> str:
    """Key under which equal answers vote together ("0.50", "1/2" and "\\frac{1}{2}" agree)."""
    number = to_number(answer)
    return f"{number:.9g}" if number is not None else "".join(answer.split())


def _groups(n: int, group: Sequence[Any] | None, group_size: int | None) -> list[list[int]]:
    if group is not None:
        members: dict[Any, list[int]] = {}
        for i, g in enumerate(group):
            members.setdefault(g, []).append(i)
        return list(members.values())
    if not group_size or group_size <= 0:
        raise ValueError("majority_vote needs a `group` column or a positive `group_size` option")
    if n % group_size:
        raise ValueError(f"batch of {n} completions is not a multiple of group_size={group_size}")
    return [list(range(s, s + group_size)) for s in range(0, n, group_size)]


@verifier(name="majority_vote", batched=True,
          description="Label-free (TTRL): 1 if a completion's answer equals its group's majority.")
def majority_vote(completions: list, group: Sequence[Any] | None = None, *,
                  group_size: int | None = None,
                  extract: Sequence[str] = PLAIN_CHAIN) -> list[VerifierResult]:
    """Score each completion by agreement with its group's majority answer."""
    answers = [extract_answer(completion_text(c), extract) for c in completions]
    results: list[VerifierResult | None] = [None] * len(completions)
    for members in _groups(len(completions), group, group_size):
        keys = {i: vote_key(answers[i]) for i in members if answers[i] is not None}
        votes = Counter(keys.values())
        majority, count = votes.most_common(1)[0] if votes else (None, 0)
        for i in members:
            ok = i in keys and keys[i] == majority
            reason = f"majority {majority!r} with {count}/{len(members)} votes" if votes \
                else "no answers in group"
            results[i] = VerifierResult(1.0 if ok else 0.0, ok, answers[i], reason)
    return results
