"""DAPO shaping functions: soft overlong punishment (eq. 13), overlong filtering, group filter."""
import pytest
import torch

from posttrain.rl.algos.shaping import (
    groups_with_signal,
    overlong_filter_mask,
    soft_overlong_punishment,
)


def test_soft_overlong_punishment_hand_computed():
    """L_max = 10, L_cache = 4, so the ramp starts after 6 tokens:

    |y| = 3, 6   -> 0                      (short enough)
    |y| = 7      -> (6 - 7) / 4 = -0.25
    |y| = 9      -> (6 - 9) / 4 = -0.75
    |y| = 10     -> (6 - 10) / 4 = -1.0     (at L_max)
    |y| = 12     -> -1                      (beyond L_max)
    times penalty 0.5.
    """
    lengths = torch.tensor([3, 6, 7, 9, 10, 12])
    out = soft_overlong_punishment(lengths, max_length=10, buffer=4, penalty=0.5)
    torch.testing.assert_close(out, 0.5 * torch.tensor([0.0, 0.0, -0.25, -0.75, -1.0, -1.0]), atol=1e-7, rtol=0)


def test_soft_overlong_punishment_rejects_bad_buffer():
    with pytest.raises(ValueError, match="buffer"):
        soft_overlong_punishment(torch.tensor([1]), max_length=4, buffer=5)


def test_overlong_filter_masks_only_truncated_rows():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    out = overlong_filter_mask(mask, torch.tensor([False, True, False]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


def test_groups_with_signal_drops_all_equal_groups():
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.5])
    assert groups_with_signal(rewards, 3).tolist() == [False, False, True]


def test_prompt_stream_resumes_where_it_stopped():
    from posttrain.rl.loop.sampling import PromptStream

    rows = [{"prompt": str(i)} for i in range(5)]
    straight = PromptStream(rows, seed=3)
    expected = [r["prompt"] for r in straight.take(12)]
    first = PromptStream(rows, seed=3)
    head = [r["prompt"] for r in first.take(7)]
    resumed = PromptStream(rows, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert head + [r["prompt"] for r in resumed.take(5)] == expected
    assert sorted(expected[:5]) == sorted(r["prompt"] for r in rows)  # an epoch is a permutation
