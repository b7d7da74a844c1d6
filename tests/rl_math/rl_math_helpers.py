"""Shared helpers for the RL-math tests: float64 tensors and an exact-tolerance comparison."""
import torch

ATOL = 1e-6


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def close(actual, expected, atol=ATOL):
    """Like torch.testing.assert_close(rtol=0), whose first call costs ~1 s of imports."""
    expected = expected if torch.is_tensor(expected) else t(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual, expected)
    assert torch.allclose(actual, expected, atol=atol, rtol=0), f"\n{actual}\n!=\n{expected}"
