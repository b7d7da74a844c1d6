"""Pure evaluation metrics.

pass@k uses the unbiased estimator of Chen et al. 2021, "Evaluating Large Language Models Trained
on Code" (arXiv 2107.03374, eq. 1 and its numerically stable product form): with n samples of which
c pass, pass@k = 1 - C(n-c, k) / C(n, k), averaged over problems.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `n` samples, `c` correct (Chen et al. 2021, eq. 1).

    1 - prod_{i=n-c+1}^{n} (1 - k / i); exactly 1.0 when fewer than k samples fail.

    >>> pass_at_k(n=4, c=1, k=1)
    0.25
    >>> round(pass_at_k(n=4, c=1, k=2), 6)   # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def summarize_groups(passed: Sequence[bool], group_size: int, ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over problems; `passed` holds `group_size` consecutive samples per problem."""
    if group_size < 1 or len(passed) % group_size:
        raise ValueError(f"{len(passed)} results do not split into groups of {group_size}")
    groups = [passed[i:i + group_size] for i in range(0, len(passed), group_size)]
    out = {}
    for k in ks:
        if k <= group_size:
            out[f"pass@{k}"] = sum(pass_at_k(group_size, sum(g), k) for g in groups) / len(groups)
    return out
