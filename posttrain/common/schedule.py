"""Learning-rate schedules of the RL loop, named as the offline stages name them (`lr_scheduler`).

The offline stages hand `lr_scheduler` to transformers (``lr_scheduler_type``); the RL loop, which
owns its optimizer, multiplies the peak `lr` by :func:`lr_multiplier`. After the warm-up the
curves are transformers' (``get_linear_schedule_with_warmup``, ``get_cosine_schedule_with_warmup``
with half a cycle, constant). One difference, kept from the RL loop's first schedule: warm-up step
``s`` (0-based) uses ``(s + 1) / (warmup + 1)``, so the first update is never taken at lr 0
(transformers starts its warm-up at ``s / warmup = 0``).
"""
from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["linear", "cosine", "constant", "constant_with_warmup"]


def lr_multiplier(schedule: LRSchedule, step: int, warmup: int, total: int) -> float:
    """Factor on the peak lr for optimizer step ``step`` (0-based) of ``total``, ``warmup`` of them warming up.

    ``constant`` ignores the warm-up, as in transformers.

    >>> [round(lr_multiplier("linear", s, 1, 5), 3) for s in range(5)]
    [0.5, 1.0, 0.75, 0.5, 0.25]
    >>> [round(lr_multiplier("cosine", s, 0, 4), 3) for s in range(4)]
    [1.0, 0.854, 0.5, 0.146]
    """
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr_scheduler {schedule!r}; expected one of linear, cosine, constant, constant_with_warmup")
