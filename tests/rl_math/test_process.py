"""Process rewards (posttrain.rl.algos.process): step ends, PRM targets, per-step reward placement
and PAV's progress, on hand-computed values."""
import doctest

import pytest
import torch

from posttrain.rl.algos import process
from posttrain.rl.algos.process import (
    IGNORE_INDEX,
    place_step_rewards,
    step_char_ends,
    step_progress,
    step_targets,
    step_token_ends,
)


def test_step_ends_in_the_worked_answer():
    """'ones 3+2+8=13, tens 4+3+3+1=11, so 113': steps of 13, 15 and 6 characters joined by ', ':
    last characters at 12, 12+2+15 = 29 and 29+2+6 = 37 (the string has 38 characters)."""
    steps = ["ones 3+2+8=13", "tens 4+3+3+1=11", "so 113"]
    text = ", ".join(steps)
    ends = step_char_ends(steps, ", ")
    assert ends == [12, 29, 37] and len(text) == 38
    assert [text[e] for e in ends] == ["3", "1", "3"]


def test_token_ends_follow_the_offsets():
    """Tokens 'ones'(0,4) ' 3'(4,6) ... with the step ending inside a two-character token: the
    token holding the character is chosen; a step ending past the last token maps to the last."""
    offsets = [(0, 4), (4, 6), (6, 8), (8, 9), (9, 12)]
    assert step_token_ends(offsets, [5, 7, 8, 11]) == [1, 2, 3, 4]
    assert step_token_ends(offsets, [3, 40]) == [0, 4]
    with pytest.raises(ValueError, match="no tokens"):
        step_token_ends([], [0])


def test_step_targets_label_only_the_step_ends():
    """3 steps ending at tokens 1, 4, 6 of 8, labels 1, 1, 0 (a mistake in the last step)."""
    assert step_targets([1, 4, 6], [1, 1, 0], 8) == [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX, 1,
                                                     IGNORE_INDEX, 0, IGNORE_INDEX]
    with pytest.raises(ValueError, match="2 step ends but 3 labels"):
        step_targets([1, 4], [1, 1, 0], 8)
    with pytest.raises(ValueError, match="outside"):
        step_targets([8], [1], 8)


def test_place_step_rewards():
    """Row 0: 0.9 at token 2, 0.1 at token 4; row 1: two steps ending on token 1 add (0.25 + 0.5)."""
    out = place_step_rewards([[0.9, 0.1], [0.25, 0.5]], [[2, 4], [1, 1]], width=5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.9, 0.0, 0.1], [0.0, 0.75, 0.0, 0.0, 0.0]]),
                               rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="1 step rewards but 2 step ends"):
        place_step_rewards([[0.1]], [[0, 1]], width=3)


def test_step_progress_telescopes():
    """PAV progress of scores 0.8, 0.85, 0.1 from 0.5: 0.3, 0.05, -0.75; the sum is s_K - s_0 = -0.4."""
    progress = step_progress([0.8, 0.85, 0.1], initial=0.5)
    assert progress == pytest.approx([0.3, 0.05, -0.75], abs=1e-12)
    assert sum(progress) == pytest.approx(0.1 - 0.5, abs=1e-12)


def test_docstring_examples():
    assert doctest.testmod(process).failed == 0
