"""Token plumbing: pad rollouts into tensors and read per-token log-probs (and values) off models.

Layout (see :mod:`posttrain.rl.loop.batches`): prompts left-padded to width P, responses
right-padded to width T, so the logits at columns P-1 .. P+T-2 predict the response tokens.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from posttrain.rl.loop.batches import RolloutTensors
from posttrain.rl.loop.packing import ForwardLayout, MicroSplit, padded_layout, split_layout


def collate(rollout: Any, pad_token_id: int) -> RolloutTensors:
    """Pad a RolloutBatch's prompt and completion ids into the P | T layout."""
    prompts, completions = rollout.prompt_ids, rollout.completion_ids
    batch = len(prompts)
    width_p = max(len(p) for p in prompts)
    width_t = max(1, max(len(c) for c in completions))
    input_ids = torch.full((batch, width_p + width_t), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width_p + width_t), dtype=torch.long)
    sampler = torch.full((batch, width_t), math.nan)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[i, width_p - len(p):width_p] = torch.tensor(p, dtype=torch.long)
        attention_mask[i, width_p - len(p):width_p] = 1
        if c:
            input_ids[i, width_p:width_p + len(c)] = torch.tensor(c, dtype=torch.long)
            attention_mask[i, width_p:width_p + len(c)] = 1
        logps = rollout.sampler_logprobs[i] if rollout.sampler_logprobs else []
        if logps:
            sampler[i, :len(logps)] = torch.tensor([math.nan if x is None else x for x in logps], dtype=torch.float32)
    # positions count real tokens, as HF generate does under left padding
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    truncated = torch.tensor([r == "length" for r in rollout.finish_reasons], dtype=torch.bool)
    response_mask = attention_mask[:, width_p:].to(torch.float32)
    if getattr(rollout, "completion_mask", None) is not None:
        # episodes: the environment's tokens are context (attended to, never trained on)
        for i, mask in enumerate(rollout.completion_mask):
            response_mask[i, :len(mask)] = torch.tensor(mask, dtype=torch.float32)
    return RolloutTensors(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          response_mask=response_mask,
                          sampler_logprobs=sampler, truncated=truncated, prompt_width=width_p)


def forward_responses(model: torch.nn.Module, layout: ForwardLayout, temperature: float,
                      with_entropy: bool = False, entropy_grad: bool = False):
    """One forward of an ActorCritic over a layout -> (logprobs (b, T), entropy (b, T) | None,
    values (b, T) | None), 0 wherever nothing was generated.

    Log-probs are of softmax(logits / temperature), the distribution sampled from; ``values[:, t]``
    is V(s_t), the critic's output at the position that predicts token t. Entropy is
    differentiable only with ``entropy_grad`` (an entropy bonus), else the metric alone.
    """
    logprobs, entropy, values = model(input_ids=layout.input_ids, attention_mask=layout.attention_mask,
                                      position_ids=layout.position_ids, logit_index=layout.logit_index,
                                      target_ids=layout.target_ids, temperature=temperature,
                                      with_entropy=with_entropy, entropy_grad=entropy_grad)
    return (layout.scatter(logprobs), None if entropy is None else layout.scatter(entropy),
            None if values is None else layout.scatter(values))


def padded_forward(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor, prompt_width: int, temperature: float, **kwargs):
    """:func:`forward_responses` over the collate layout as it is (one forward, no packing)."""
    layout = padded_layout(input_ids, attention_mask, position_ids, prompt_width)
    return forward_responses(model, layout, temperature, **kwargs)


@torch.no_grad()
def forward_in_chunks(model: torch.nn.Module, tensors: RolloutTensors, splits: list[MicroSplit], temperature: float,
                      with_entropy: bool = False):
    """``forward_responses`` over a whole batch, one forward per micro-batch split, without
    gradients -> (B, T) tensors in the batch's row order (fillers run, for the collectives, and
    are dropped)."""
    batch, width_t = tensors.response_mask.shape
    outs: list = [None, None, None]
    for split in splits:
        rows = split.rows.to(tensors.input_ids.device)
        layout = split_layout(split, tensors.input_ids[rows], tensors.attention_mask[rows],
                              tensors.position_ids[rows], tensors.prompt_width)
        results = forward_responses(model, layout, temperature, with_entropy)
        if not split.real:
            continue
        for k, part in enumerate(results):
            if part is not None:
                if outs[k] is None:
                    outs[k] = part.new_zeros((batch, width_t))
                outs[k][rows] = part
    return tuple(outs)
