"""Process rewards: a process reward model (PRM) scores each step of an answer.

A PRM reads the prompt and the answer and, at the last token of every step, predicts whether the
answer is still right up to there (Lightman et al. 2023, "Let's Verify Step by Step", arXiv
2305.20050, Sec. 2.4: a step-level correctness classifier; Uesato et al. 2022, arXiv 2211.14275).
Labels follow the first-error convention: 1 while every step so far is right, 0 from the first
mistake on (PRM800K's and Math-Shepherd's "the prefix is correct").

* :func:`step_token_ends` maps each step's last character to the token that holds it (answers
  are text, models read tokens; offsets come from the tokenizer);
* :func:`step_targets` builds the PRM's training targets: the step's label at its last token,
  -100 (ignored by the loss) everywhere else, as token classification expects;
* :func:`place_step_rewards` puts per-step rewards on the tokens that end the steps, the
  token-level rewards an RL loop sums into returns;
* :func:`step_progress` is PAV's process advantage (Setlur et al. 2024, "Rewarding Progress",
  arXiv 2410.08146, Sec. 3, eq. 2): a step is rewarded by how much it changed the verifier's
  estimate of success, ``A_k = V(prefix_k) - V(prefix_{k-1})``, instead of the estimate itself,
  which pays again for what earlier steps earned. Ours: the PRM's probability stands in for the
  prover's value V (the paper trains a separate verifier under a prover policy), and V before
  the first step is the PRM's score at the end of the prompt.

>>> step_targets([2, 5], [1, 0], length=7)
[-100, -100, 1, -100, -100, 0, -100]
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss's default ignore_index, as HF token classification uses


def step_char_ends(steps: Sequence[str], separator: str) -> list[int]:
    """The index of each step's last character in ``separator.join(steps)``.

    >>> step_char_ends(["ab", "cde"], ", ")
    [1, 6]
    """
    ends, position = [], 0
    for i, step in enumerate(steps):
        position += len(step)
        ends.append(position - 1)
        if i < len(steps) - 1:
            position += len(separator)
    return ends


def step_token_ends(token_offsets: Sequence[tuple[int, int]], char_ends: Sequence[int]) -> list[int]:
    """For each step's last character, the index of the first token whose span reaches it.

    ``token_offsets``: (start, end) character spans of the answer's tokens, end exclusive, in
    order (a fast tokenizer's offset mapping). A character past the last token maps to the last
    token (an answer cut short still ends its final step there).

    >>> step_token_ends([(0, 2), (2, 3), (3, 7)], [1, 2, 5])
    [0, 1, 2]
    """
    if not token_offsets:
        raise ValueError("the answer has no tokens: there is no token to score a step at")
    out, token = [], 0
    for end in char_ends:
        while token < len(token_offsets) - 1 and token_offsets[token][1] <= end:
            token += 1
        out.append(token)
    return out


def step_targets(token_ends: Sequence[int], labels: Sequence[int], length: int) -> list[int]:
    """Token-classification targets of one answer (``length`` tokens): ``labels[k]`` at the
    token ``token_ends[k]``, IGNORE_INDEX elsewhere. Two steps ending on one token keep the later
    step's label (a later label never claims more than an earlier one under the first-error
    convention)."""
    if len(token_ends) != len(labels):
        raise ValueError(f"{len(token_ends)} step ends but {len(labels)} labels")
    targets = [IGNORE_INDEX] * length
    for position, label in zip(token_ends, labels):
        if not 0 <= position < length:
            raise ValueError(f"step end at token {position} is outside the answer's {length} tokens")
        targets[position] = int(label)
    return targets


def place_step_rewards(step_rewards: Sequence[Sequence[float]], token_ends: Sequence[Sequence[int]],
                       width: int) -> torch.Tensor:
    """(B, width) float32 token rewards: row i holds ``step_rewards[i][k]`` at token
    ``token_ends[i][k]`` (rewards of steps ending on one token add up), 0 elsewhere.

    >>> place_step_rewards([[0.5, -1.0]], [[1, 3]], width=5).tolist()
    [[0.0, 0.5, 0.0, -1.0, 0.0]]
    """
    out = torch.zeros((len(step_rewards), width), dtype=torch.float32)
    for row, (rewards, ends) in enumerate(zip(step_rewards, token_ends)):
        if len(rewards) != len(ends):
            raise ValueError(f"row {row}: {len(rewards)} step rewards but {len(ends)} step ends")
        for reward, position in zip(rewards, ends):
            if not 0 <= position < width:
                raise ValueError(f"row {row}: step end at token {position} is outside width {width}")
            out[row, position] += reward
    return out


def step_progress(step_scores: Sequence[float], initial: float) -> list[float]:
    """PAV's process advantages of one answer: ``A_k = s_k - s_{k-1}`` with ``s_0 = initial``.

    >>> [round(x, 6) for x in step_progress([0.9, 0.7, 0.2], initial=0.6)]
    [0.3, -0.2, -0.5]
    """
    previous, out = initial, []
    for score in step_scores:
        out.append(score - previous)
        previous = score
    return out
