"""One seed derivation (posttrain.common.seeds) for every random stream of the RL loop."""
from __future__ import annotations

import contextlib
import doctest
import hashlib
import random
from types import SimpleNamespace

import pytest

from posttrain.common import seeds
from posttrain.common.seeds import STREAMS, derive_seed
from posttrain.rl.loop import sampling
from posttrain.rl.loop.sampling import PromptStream, generate_round


def test_derive_seed_is_blake2b_of_the_tuple_written_out_independently():
    key = repr((0, "sampling", 3, 0, 1)).encode()
    expected = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % (2**31 - 1)
    assert derive_seed(0, "sampling", 3, 0, 1) == expected == 1754617300
    with pytest.raises(ValueError, match="unknown random stream 'sampler'"):
        derive_seed(0, "sampler", 1)
    assert doctest.testmod(seeds).failed == 0


def test_no_two_streams_steps_rounds_processes_or_stage_seeds_share_a_seed():
    values = [derive_seed(seed, stream, step, round_index, rank)
              for seed in range(3) for stream in STREAMS for step in range(100)
              for round_index in range(3) for rank in range(4)]
    assert len(set(values)) == len(values) == 3 * len(STREAMS) * 100 * 3 * 4
    assert all(0 <= v < 2**31 - 1 for v in values)


def test_the_prompt_order_of_each_epoch_comes_from_the_prompt_order_stream():
    rows = [{"prompt": str(i)} for i in range(10)]
    stream = PromptStream(rows, seed=7)
    for epoch in range(3):
        order = list(range(10))
        random.Random(derive_seed(7, "prompt_order", epoch)).shuffle(order)
        assert [r["prompt"] for r in stream.take(10)] == [str(i) for i in order]
    assert doctest.testmod(sampling).failed == 0


class _Captured(Exception):
    pass


def test_each_rollout_round_samples_with_the_sampling_stream_of_its_step_round_and_process():
    from posttrain.rl.loop.dist import Processes
    from posttrain.stages.grpo import GRPOConfig

    config = GRPOConfig.model_validate({"kind": "grpo", "model": "/m", "data": "/d.jsonl", "seed": 5,
                                        "rewards": [{"verifier": "math"}], "prompts_per_step": 2, "group_size": 2})
    seen = []

    def generate(prompts, sampling_config):
        seen.append(sampling_config.seed)
        raise _Captured

    session = SimpleNamespace(config=config, procs=Processes(), stream=PromptStream([{"prompt": "p"}] * 4, seed=5),
                              engine=SimpleNamespace(generate=generate), episodes=None)
    for step, round_index in [(1, 0), (1, 1), (2, 0)]:
        with pytest.raises(_Captured):
            generate_round(session, step, round_index, timer=lambda name: contextlib.nullcontext())
    assert seen == [derive_seed(5, "sampling", 1, 0, 0), derive_seed(5, "sampling", 1, 1, 0),
                    derive_seed(5, "sampling", 2, 0, 0)]
