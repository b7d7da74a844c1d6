"""Experience shaping from config: overlong punishment/filtering and mismatch IS weights."""
import math

import torch

from posttrain.rl.loop.batches import RolloutTensors
from posttrain.rl.loop.experience import loss_mask, mismatch_correction, shaped_rewards
from posttrain.rl.scored import ScoredBatch
from posttrain.stages.grpo import GRPOConfig


def config(**keys):
    return GRPOConfig.model_validate({"kind": "grpo", "data": "x", "rewards": [{"function": "a:b"}], "group_size": 2,
                                      **keys})


def tensors(lengths, width, truncated):
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    return RolloutTensors(input_ids=torch.zeros(len(lengths), width + 1, dtype=torch.long),
                          attention_mask=torch.ones(len(lengths), width + 1, dtype=torch.long),
                          position_ids=torch.zeros(len(lengths), width + 1, dtype=torch.long), response_mask=mask,
                          sampler_logprobs=torch.zeros(len(lengths), width), truncated=torch.tensor(truncated),
                          prompt_width=1)


def scored(rewards):
    return ScoredBatch(rollout=None, rows=[{}] * len(rewards), channel_scores={}, channel_passed={}, channel_errors={},
                       rewards=torch.tensor(rewards), group_size=2)


def test_dapo_preset_shapes_rewards_by_length():
    """max_tokens 10, overlong_buffer_ratio 0.2 -> L_cache 2, ramp after 8 tokens:
    lengths 8, 9, 10 -> penalties 0, -0.5, -1 added to rewards 1, 1, 0."""
    dapo = config(variant="dapo", max_tokens=10)
    assert dapo.overlong_buffer == 2
    out = shaped_rewards(dapo, scored([1.0, 1.0, 0.0]), tensors([8, 9, 10], 10, [False, False, True]))
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5, -1.0]))
    plain = shaped_rewards(config(variant="grpo", max_tokens=10), scored([1.0, 1.0, 0.0]),
                           tensors([8, 9, 10], 10, [False, False, True]))
    torch.testing.assert_close(plain, torch.tensor([1.0, 1.0, 0.0]))


def test_overlong_filtering_masks_truncated_rows():
    batch = tensors([2, 3], 3, [False, True])
    torch.testing.assert_close(loss_mask(config(overlong_filtering=True), batch), torch.tensor([[1.0, 1.0, 0.0], [0.0] * 3]))
    torch.testing.assert_close(loss_mask(config(), batch), batch.response_mask)


def test_mismatch_weights_follow_the_config():
    """Token ratios exp(old - sampler) = [e^0.1, e^1.0]; clip_max 2: tis truncates e^1 = 2.718 to 2,
    mis zeroes it; none gives no weights but still the metrics."""
    batch = tensors([2], 2, [False])
    batch.sampler_logprobs = torch.tensor([[-1.1, -2.0]])
    old = torch.tensor([[-1.0, -1.0]])
    weights, stats = mismatch_correction(config(mismatch_correction="tis", mismatch_clip_max=2.0), old, batch)
    torch.testing.assert_close(weights, torch.tensor([[math.exp(0.1), 2.0]]))
    assert stats["mismatch/logprob_abs_diff_max"] == torch.tensor(1.0)
    weights, _ = mismatch_correction(config(mismatch_correction="mis", mismatch_clip_max=2.0), old, batch)
    torch.testing.assert_close(weights, torch.tensor([[math.exp(0.1), 0.0]]))
    weights, stats = mismatch_correction(config(), old, batch)
    assert weights is None and "mismatch/frac_truncated" in stats
