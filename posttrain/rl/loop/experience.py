"""Scored completions -> an ExperienceBatch: log-probs, reward shaping, advantages, IS weights.

On-policy shortcut: when :func:`update_is_on_policy` holds, pi_old IS the policy the update's
single forward sees (one epoch, one minibatch, no optimizer step in between), so the no-grad
forward that would compute ``old_logprobs`` is skipped and the update uses its own log-probs,
detached (ratio = 1: the same loss and gradients, one forward fewer per step; TRL does the same
when num_iterations == 1). The experience then carries ``old_logprobs=None``, and the metrics
read off the old log-probs (``kl``, ``kl/sequence``, ``mismatch/*``) are computed by
:func:`policy_logprob_stats` from the update's detached log-probs and logged with the update's
stats (posttrain.rl.loop.update.minibatch_step).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch

from posttrain.common.seeds import derive_seed
from posttrain.rl.algos import (
    advantage_estimator_spec,
    filter_by_reward,
    kl_estimate,
    mismatch_weights,
    otc_tool_reward,
    turn_kl_weights,
)
from posttrain.rl.algos.shaping import overlong_filter_mask, soft_overlong_punishment
from posttrain.rl.loop.advantages import (
    AdvantageInputs,
    compute_advantages,
    process_token_rewards,
    step_tensors,
    token_turns,
)
from posttrain.rl.loop.batches import ExperienceBatch, RolloutTensors
from posttrain.rl.loop.packing import MicroSplit, split_batch
from posttrain.rl.loop.tokens import collate, forward_in_chunks
from posttrain.rl.scored import PendingScores, ScoredBatch, joined

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from posttrain.rl.algos import AdaptiveKLController, FixedKLController
    from posttrain.rl.loop.config import BatchPlan, OnlineRLConfig
    from posttrain.rl.loop.dist import Processes
    from posttrain.rl.loop.models import ActorCritic

_MISMATCH_MODE = {"none": "truncate", "tis": "truncate", "mis": "mask"}


def shaped_rewards(config, scored: ScoredBatch, tensors: RolloutTensors) -> torch.Tensor:
    """(B,) channel reward, times OTC's tool reward for episodes (environment.tool_cost: otc; the
    correct episodes are those with a positive reward), plus DAPO's soft overlong punishment
    (when overlong_buffer_ratio > 0)."""
    rewards = scored.rewards.to(tensors.response_mask.device)
    environment = config.environment
    if environment is not None and environment.tool_cost == "otc":
        calls = torch.tensor([e["info"].get("tool_calls", 0.0) for e in scored.rollout.episodes], device=rewards.device)
        rewards = rewards * otc_tool_reward(calls, rewards > 0, scored.group_size, environment.tool_cost_c)
    if config.overlong_buffer > 0:
        rewards = rewards + soft_overlong_punishment(tensors.response_lengths, config.max_tokens,
                                                     config.overlong_buffer, config.overlong_penalty)
    return rewards


def loss_mask(config, tensors: RolloutTensors) -> torch.Tensor:
    """(B, T) tokens that enter the loss: generated tokens, minus truncated rows under overlong filtering."""
    if config.overlong_filtering:
        return overlong_filter_mask(tensors.response_mask, tensors.truncated)
    return tensors.response_mask


def reward_filter_mask(config, rewards: torch.Tensor, group_size: int, seed: int) -> torch.Tensor | None:
    """(B,) completions kept for the update under PF-PPO-style filtering (or RAFT's selection:
    best_of_n above reward_filter_min), or None when off."""
    if config.reward_filter == "none":
        return None
    generator = torch.Generator().manual_seed(seed)
    threshold = config.reward_filter_min
    if threshold is not None:  # compared as the rewards hold it: a float32 0.7 reaches a threshold of 0.7
        threshold = float(torch.tensor(threshold, dtype=rewards.dtype))
    return filter_by_reward(rewards.detach().cpu().double(), config.reward_filter, bands=config.reward_filter_bands or None,
                            group_size=group_size, generator=generator, min_reward=threshold).to(rewards.device)


def update_is_on_policy(config, batch_size: int) -> bool:
    """True when old log-probs from a separate forward would equal the update's own, detached.

    ``batch_size``: this process's completions in the step. It holds when the update is one
    optimizer step on the policy that sampled (``ppo_epochs == 1`` and one minibatch of the whole
    batch; gradient accumulation inside it is fine, as the optimizer steps after the last
    micro-batch) AND nothing before the update reads the old log-probs: no mismatch IS weights,
    no KL in the reward, an advantage estimator that is sequence-level (token-level ones build
    KL-penalised token rewards from them), no critic (its values come from the same forward and
    GAE needs them before the update), no adaptive KL (it steers beta from the experience KL).

    >>> from types import SimpleNamespace as C
    >>> base = dict(ppo_epochs=1, minibatch_size=None, uses_critic=False, mismatch_correction="none",
    ...             advantage_estimator="group_normalized", kl_placement="loss", kl_coef=0.04, kl_target=None)
    >>> update_is_on_policy(C(**base), 16), update_is_on_policy(C(**{**base, "ppo_epochs": 2}), 16)
    (True, False)
    """
    one_minibatch = config.minibatch_size is None or config.minibatch_size >= batch_size
    kl_in_reward = config.kl_placement == "reward" and config.kl_coef > 0
    return (config.ppo_epochs == 1 and one_minibatch and not config.uses_critic
            and config.mismatch_correction == "none" and not kl_in_reward
            and advantage_estimator_spec(config.advantage_estimator).level == "sequence"
            and config.kl_target is None)


class ExperienceState(Protocol):
    """What building the experience reads of the session (RLSession provides it)."""

    config: OnlineRLConfig
    plan: BatchPlan
    procs: Processes
    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    unwrapped: ActorCritic
    ref_model: ActorCritic | None
    kl_controller: FixedKLController | AdaptiveKLController


def forward_splits(session, attention_mask: torch.Tensor, prompt_width: int, rows_per_micro: int) -> list[MicroSplit]:
    """The micro-batches of a batch (or minibatch) on this process: padded slices of
    ``rows_per_micro`` rows, or packed by ``max_tokens_per_microbatch`` (count agreed over processes)."""
    return split_batch(attention_mask, prompt_width, rows_per_micro=rows_per_micro,
                       max_tokens=session.config.max_tokens_per_microbatch, agree=session.procs.max)


def experience_logprobs(session: ExperienceState, tensors: RolloutTensors, policy: bool = True):
    """Trainer log-probs under the current (= old) policy, critic values, reference log-probs.

    ``policy=False`` (the on-policy shortcut) skips the policy's forward: (None, None, ref)."""
    temperature = session.config.temperature
    splits = forward_splits(session, tensors.attention_mask, tensors.prompt_width, session.plan.micro_batch)
    old_logprobs = values = None
    if policy:
        old_logprobs, _, values = forward_in_chunks(session.model, tensors, splits, temperature)
    ref_logprobs = None
    if session.ref_model is not None:
        ref_logprobs, _, _ = forward_in_chunks(session.ref_model, tensors, splits, temperature)
    elif session.config.needs_reference and session.config.lora is not None:
        with session.unwrapped.policy.disable_adapter():  # the base model is the reference: no second copy
            ref_logprobs, _, _ = forward_in_chunks(session.model, tensors, splits, temperature)
    elif session.config.needs_reference:  # a KL term without its reference would silently train without it
        raise RuntimeError("kl_coef > 0 but the session holds no reference model")
    return old_logprobs, values, ref_logprobs


def _mismatch(config, old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, generated: torch.Tensor):
    weights, stats = mismatch_weights(old_logprobs, sampler_logprobs, generated,
                                      level=config.mismatch_level, mode=_MISMATCH_MODE[config.mismatch_correction],
                                      clip_max=config.mismatch_clip_max, clip_min=config.mismatch_clip_min)
    return weights, {f"mismatch/{k}": v for k, v in stats.items()}


def mismatch_correction(config, old_logprobs: torch.Tensor, tensors: RolloutTensors):
    """IS weights for the sampler/trainer mismatch (None when uncorrected) and their metrics."""
    weights, stats = _mismatch(config, old_logprobs, tensors.sampler_logprobs, tensors.response_mask)
    return (weights if config.mismatch_correction != "none" else None), stats


def policy_logprob_stats(config, logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                         generated: torch.Tensor, ref_logprobs: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Metrics of the trainer's log-probs under pi_old: ``mismatch/*`` (vs the sampler's) and,
    with a reference, ``kl`` (per generated token) and ``kl/sequence`` (summed per completion).

    All tensors (B, T); ``generated`` is 1 on generated tokens (before overlong filtering). Rows
    may come in any order (every statistic is over all rows), so the update can pass its shuffled
    minibatch. ``logprobs`` are the experience's old log-probs or, under the on-policy shortcut,
    the update's own, detached."""
    _, stats = _mismatch(config, logprobs, sampler_logprobs, generated)
    return {**stats, **_kl_stats(config, logprobs, ref_logprobs, generated)}


def _kl_stats(config, logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, generated: torch.Tensor):
    if ref_logprobs is None:
        return {}
    kl = kl_estimate(logprobs, ref_logprobs, config.kl_estimator, generated)  # (B, T), 0 off `generated`
    return {"kl": kl.sum() / generated.sum().clamp(min=1.0), "kl/sequence": kl.sum(dim=1).mean()}


def build_experience(session: ExperienceState, scored: ScoredBatch | PendingScores, timer: Callable,
                     step: int = 0) -> tuple[ExperienceBatch, RolloutTensors, dict]:
    """Everything the update needs for this process's completions, plus experience metrics.

    ``scored`` may still be pending (overlap_scoring): the log-probs need only the tokens, so
    they are computed while the rewards are scored, and the rewards are joined after them."""
    config, acc = session.config, session.accelerator
    tensors = collate(scored.rollout, session.tokenizer.pad_token_id).to(acc.device)
    on_policy = update_is_on_policy(config, len(scored))
    with timer("logprobs"):  # ~0 s under the shortcut without a reference model
        old_logprobs, values, ref_logprobs = experience_logprobs(session, tensors, policy=not on_policy)
    scored = joined(scored, timer)
    mask = loss_mask(config, tensors)
    # old_logprobs is None under the shortcut: the estimators it allows read it only for a KL in the reward
    rewards = shaped_rewards(config, scored, tensors)
    steps = None
    if scored.rollout.episodes is not None and advantage_estimator_spec(config.advantage_estimator).level == "step":
        steps = step_tensors(scored.rollout.episodes, rewards, scored.group_size, mask.shape[1])
    process = process_token_rewards(scored, session.tokenizer, mask.shape[1])
    inputs = AdvantageInputs(rewards=rewards, response_mask=mask, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                             values=values, kl_coef=session.kl_controller.value, steps=steps,
                             process_rewards=None if process is None else process.to(mask.device))
    advantages, returns, stats = compute_advantages(config, inputs, session.procs.gather_rows)
    keep = reward_filter_mask(config, inputs.rewards, scored.group_size,
                              seed=derive_seed(config.seed, "reward_filter", step, session.procs.rank))
    if keep is not None:  # filtered completions keep their place in the group statistics, not the loss
        mask = mask * keep[:, None].to(mask.dtype)
        stats["reward_filter/kept_fraction"] = keep.float().mean()
    kl_weights = None
    if config.kl_turn_weights is not None:
        if ref_logprobs is None or scored.rollout.episodes is None:  # the schema requires both: never silently plain
            raise RuntimeError("kl_turn_weights is set but the step has no reference log-probs or no episodes")
        kl_weights = turn_kl_weights(token_turns(scored.rollout.episodes, mask.shape[1]), config.kl_turn_weights,
                                     mask.dtype).to(mask.device)
    loss_weights = None
    if not on_policy:  # else the update computes these stats from its own forward
        loss_weights, mismatch_stats = mismatch_correction(config, old_logprobs, tensors)
        stats.update(mismatch_stats, **_kl_stats(config, old_logprobs, ref_logprobs, tensors.response_mask))
    stats["reward/shaped"] = inputs.rewards.mean()
    if process is not None:
        stats["reward/process"] = process.sum(dim=1).mean()  # weighted step rewards per completion
    exp = ExperienceBatch(input_ids=tensors.input_ids, attention_mask=tensors.attention_mask,
                          position_ids=tensors.position_ids, response_mask=mask, old_logprobs=old_logprobs,
                          sampler_logprobs=tensors.sampler_logprobs, advantages=advantages,
                          prompt_width=tensors.prompt_width, ref_logprobs=ref_logprobs, values=values,
                          returns=returns, loss_weights=loss_weights, kl_weights=kl_weights)
    return exp, tensors, stats
