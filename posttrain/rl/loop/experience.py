"""Scored completions -> an ExperienceBatch: log-probs, reward shaping, advantages, IS weights."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from posttrain.rl.algos import kl_estimate, mismatch_weights
from posttrain.rl.loop.advantages import AdvantageInputs, compute_advantages
from posttrain.rl.loop.batches import ExperienceBatch, RolloutTensors, ScoredBatch
from posttrain.rl.loop.shaping import overlong_filter_mask, soft_overlong_punishment
from posttrain.rl.loop.tokens import collate, forward_in_chunks

_MISMATCH_MODE = {"none": "truncate", "tis": "truncate", "mis": "mask"}


def shaped_rewards(config, scored: ScoredBatch, tensors: RolloutTensors) -> torch.Tensor:
    """(B,) channel reward plus DAPO's soft overlong punishment (when overlong_buffer_ratio > 0)."""
    rewards = scored.rewards.to(tensors.response_mask.device)
    if config.overlong_buffer > 0:
        rewards = rewards + soft_overlong_punishment(tensors.response_lengths, config.max_tokens,
                                                     config.overlong_buffer, config.overlong_penalty)
    return rewards


def loss_mask(config, tensors: RolloutTensors) -> torch.Tensor:
    """(B, T) tokens that enter the loss: generated tokens, minus truncated rows under overlong filtering."""
    if config.overlong_filtering:
        return overlong_filter_mask(tensors.response_mask, tensors.truncated)
    return tensors.response_mask


def _logprobs(session: Any, tensors: RolloutTensors, chunk: int):
    """Trainer log-probs under the current (= old) policy, critic values, reference log-probs."""
    temperature = session.config.temperature
    old_logprobs, _, values = forward_in_chunks(session.model, tensors, chunk, temperature)
    ref_logprobs = None
    if session.ref_model is not None:
        ref_logprobs, _, _ = forward_in_chunks(session.ref_model, tensors, chunk, temperature)
    return old_logprobs, values, ref_logprobs


def mismatch_correction(config, old_logprobs: torch.Tensor, tensors: RolloutTensors):
    """IS weights for the sampler/trainer mismatch (None when uncorrected) and their metrics."""
    weights, stats = mismatch_weights(old_logprobs, tensors.sampler_logprobs, tensors.response_mask,
                                      level=config.mismatch_level, mode=_MISMATCH_MODE[config.mismatch_correction],
                                      clip_max=config.mismatch_clip_max, clip_min=config.mismatch_clip_min)
    stats = {f"mismatch/{k}": v for k, v in stats.items()}
    return (weights if config.mismatch_correction != "none" else None), stats


def build_experience(session: Any, scored: ScoredBatch, timer: Callable) -> tuple[ExperienceBatch, RolloutTensors, dict]:
    """Everything the update needs for this process's completions, plus experience metrics."""
    config, acc = session.config, session.accelerator
    tensors = collate(scored.rollout, session.tokenizer.pad_token_id).to(acc.device)
    chunk = max(1, (config.minibatch_size or len(scored)) // config.grad_accum)
    with timer("logprobs"):
        old_logprobs, values, ref_logprobs = _logprobs(session, tensors, chunk)
    mask = loss_mask(config, tensors)
    inputs = AdvantageInputs(rewards=shaped_rewards(config, scored, tensors), response_mask=mask,
                             old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, values=values,
                             kl_coef=session.kl_controller.value)
    advantages, returns, stats = compute_advantages(config, inputs, session.procs.gather_rows)
    loss_weights, mismatch_stats = mismatch_correction(config, old_logprobs, tensors)
    stats.update(mismatch_stats)
    stats["reward/shaped"] = inputs.rewards.mean()
    if ref_logprobs is not None:
        kl = kl_estimate(old_logprobs, ref_logprobs, config.kl_estimator, tensors.response_mask)
        stats["kl"] = kl.sum() / tensors.response_mask.sum().clamp(min=1.0)
        stats["kl/sequence"] = kl.sum(dim=1).mean()
    exp = ExperienceBatch(input_ids=tensors.input_ids, attention_mask=tensors.attention_mask,
                          position_ids=tensors.position_ids, response_mask=mask, old_logprobs=old_logprobs,
                          sampler_logprobs=tensors.sampler_logprobs, advantages=advantages,
                          prompt_width=tensors.prompt_width, ref_logprobs=ref_logprobs, values=values,
                          returns=returns, loss_weights=loss_weights)
    return exp, tensors, stats
