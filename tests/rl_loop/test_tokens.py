"""Padding layout and log-prob extraction: padded batch == each row computed alone."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.rl.loop.models import ActorCritic
from posttrain.rl.loop.packing import split_batch
from posttrain.rl.loop.tokens import collate, forward_in_chunks
from posttrain.rl.rollout.types import RolloutBatch
from posttrain.rl.scored import ScoredBatch


def rollout(prompt_ids, completion_ids, reasons=None):
    return RolloutBatch(prompt_ids=prompt_ids, completion_ids=completion_ids,
                        sampler_logprobs=[[-1.0] * len(c) for c in completion_ids],
                        finish_reasons=reasons or ["stop"] * len(prompt_ids),
                        completions=["x"] * len(prompt_ids), prompt_index=list(range(len(prompt_ids))))


def test_collate_layout():
    batch = collate(rollout([[5, 6, 7], [8]], [[9], [10, 11, 12]], ["stop", "length"]), pad_token_id=0)
    assert batch.prompt_width == 3
    assert batch.input_ids.tolist() == [[5, 6, 7, 9, 0, 0], [0, 0, 8, 10, 11, 12]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 3, 3], [0, 0, 0, 1, 2, 3]]
    assert batch.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert batch.truncated.tolist() == [False, True]
    assert batch.sampler_logprobs[0, 0] == -1.0 and math.isnan(batch.sampler_logprobs[0, 1])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_padded_logprobs_equal_unpadded(tiny_model_dir, temperature):
    """Left-padded prompts with position ids must give each row the log-probs it has alone."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts, completions = [[11, 12, 13, 14], [21]], [[31, 32], [41, 42, 43]]
    batch = collate(rollout(prompts, completions), pad_token_id=0)
    logprobs, entropy, values = forward_in_chunks(ActorCritic(model), batch, padded_splits(batch, 2), temperature=temperature,
                                                  with_entropy=True)
    assert values is None and entropy.shape == (2, 3)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logits = model(ids).logits[0, len(p) - 1:-1] / temperature
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None]).squeeze(1)
        torch.testing.assert_close(logprobs[row, :len(c)], expected, atol=1e-5, rtol=1e-5)


def test_scored_batch_select_and_concat():
    base = rollout([[1], [1], [2], [2]], [[3], [4], [5], [6]])
    scored = ScoredBatch(rollout=base, rows=[{"i": 0}, {"i": 0}, {"i": 1}, {"i": 1}],
                         channel_scores={"c": torch.tensor([0.0, 1.0, 2.0, 3.0])}, channel_passed={},
                         channel_errors={"c": 1}, rewards=torch.tensor([0.0, 1.0, 2.0, 3.0]), group_size=2,
                         channel_timeouts={"c": 3})
    second = scored.select_groups([1])
    assert second.rollout.completion_ids == [[5], [6]] and second.rollout.prompt_index == [0, 0]
    joined = ScoredBatch.concat([second, scored.select_groups([0])])
    assert joined.rewards.tolist() == [2.0, 3.0, 0.0, 1.0]
    assert joined.rollout.prompt_index == [0, 0, 1, 1]
    assert joined.rows == [{"i": 1}, {"i": 1}, {"i": 0}, {"i": 0}]
    assert joined.channel_errors == {"c": 2} and joined.channel_timeouts == {"c": 6}


def padded_splits(tensors, rows):
    return split_batch(tensors.attention_mask, tensors.prompt_width, rows_per_micro=rows, max_tokens=None)
