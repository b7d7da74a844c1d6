"""Token plumbing: pad rollouts into tensors and read per-token log-probs (and values) off models.

Layout (see :mod:`posttrain.rl.loop.batches`): prompts left-padded to width P, responses
right-padded to width T, so the logits at columns P-1 .. P+T-2 predict the response tokens.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from posttrain.rl.algos import entropy_from_logits
from posttrain.rl.loop.batches import RolloutTensors


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
    return RolloutTensors(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          response_mask=attention_mask[:, width_p:].to(torch.float32),
                          sampler_logprobs=sampler, truncated=truncated, prompt_width=width_p)


def response_logprobs(logits: torch.Tensor, response_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) at the response tokens -> (B, T).

    ``logits`` (B, T, V) are the ones that predict ``response_ids`` (B, T). Dividing by the
    sampling temperature makes these the log-probs of the distribution that was sampled from.
    """
    logits = logits.float() / temperature
    # logsumexp - gathered logit: no (B, T, V) log-softmax tensor kept for the backward pass
    picked = torch.gather(logits, 2, response_ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def forward_responses(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, prompt_width: int, temperature: float,
                      with_entropy: bool = False, entropy_grad: bool = False):
    """One forward of an ActorCritic -> (logprobs (B, T), entropy (B, T) | None, values (B, T) | None).

    ``values[:, t]`` is V(s_t), the critic's output at the position that predicts token t.
    Entropy is differentiable only with ``entropy_grad`` (an entropy bonus); else it is the
    metric alone, computed without gradients one row at a time (:func:`logged_entropy`).
    """
    width_t = input_ids.shape[1] - prompt_width
    logits, values = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           logits_to_keep=width_t + 1)
    logits = logits[:, :-1]  # (B, T, V): columns P-1 .. P+T-2
    response_ids = input_ids[:, prompt_width:]
    logprobs = response_logprobs(logits, response_ids, temperature)
    entropy = None
    if with_entropy and entropy_grad:
        entropy = entropy_from_logits(logits.float() / temperature)
    elif with_entropy:
        entropy = logged_entropy(logits, temperature)
    if values is not None:
        values = values[:, prompt_width - 1:-1]  # (B, T)
    return logprobs, entropy, values


@torch.no_grad()
def logged_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Detached per-token entropy (B, T) of ``logits / temperature``, one row at a time.

    For the ``entropy`` metric when no entropy bonus needs its gradient: the full-vocabulary
    softmax temporaries are (1, T, V) instead of (B, T, V) float32 tensors, and none is kept for
    the backward.
    """
    return torch.cat([entropy_from_logits(row.float() / temperature) for row in logits.split(1)])


@torch.no_grad()
def forward_in_chunks(model: torch.nn.Module, tensors: RolloutTensors, chunk: int, temperature: float,
                      with_entropy: bool = False):
    """``forward_responses`` over a whole batch in chunks of ``chunk`` rows, without gradients."""
    outs: list[tuple] = []
    for start in range(0, tensors.input_ids.shape[0], chunk):
        rows = slice(start, start + chunk)
        outs.append(forward_responses(model, tensors.input_ids[rows], tensors.attention_mask[rows],
                                      tensors.position_ids[rows], tensors.prompt_width, temperature, with_entropy))
    logprobs = torch.cat([o[0] for o in outs])
    entropy = torch.cat([o[1] for o in outs]) if with_entropy else None
    values = torch.cat([o[2] for o in outs]) if outs[0][2] is not None else None
    return logprobs, entropy, values
