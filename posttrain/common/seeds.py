"""One derivation for the random streams of the RL loop.

An RL stage has one `seed`; each of the loop's per-step random streams (sampling, prompt order,
minibatch order, reward filtering, a curriculum's draws) draws from ``derive_seed(seed, STREAM, *indices)``, a hash of the whole tuple, so
streams never share seeds with each other, with other steps, rounds or processes, or with other
stage seeds (the ad-hoc linear formulas this replaces could: ``seed * 1_000_003 + step * 10_007``
meets ``(seed + 1) * 1_000_003`` at some step of a long run). Other seeded things take the stage
seed directly (model init, the data split, the eval stage's sampling, reward-ensemble members as
``seed + i``): they draw once per stage, not per step.
"""
from __future__ import annotations

import hashlib

#: The named streams; a new stream gets a new name here, never a reused one.
STREAMS = ("sampling", "prompt_order", "minibatch_order", "reward_filter", "curriculum_source", "curriculum_draw")

_MODULUS = 2**31 - 1  # fits every consumer: random.Random, torch.Generator, vLLM, numpy


def derive_seed(seed: int, stream: str, *indices: int) -> int:
    """A reproducible seed in ``[0, 2**31 - 1)`` for (stage seed, stream, indices...).

    The first 8 bytes of BLAKE2b over ``repr((seed, stream, *indices))``, little-endian, mod
    ``2**31 - 1``: the same on every machine and Python version (no ``hash()`` randomisation).

    >>> derive_seed(0, "sampling", 3, 0, 1) == derive_seed(0, "sampling", 3, 0, 1)
    True
    >>> len({derive_seed(0, s, 0) for s in STREAMS})
    6
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; expected one of {', '.join(STREAMS)}")
    key = repr((int(seed), stream, *(int(i) for i in indices))).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % _MODULUS
