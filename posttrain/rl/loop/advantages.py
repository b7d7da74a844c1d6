"""From rewards to per-token advantages, as the config's estimator and KL placement say.

Every formula lives in :mod:`posttrain.rl.algos`; this module only routes tensors to it, by the
level and properties each estimator declared when it was registered (never by its name):

- sequence level (``group_normalized``, ``rloo``, a user's): reward ``r - beta * KL_seq`` when
  ``kl_placement: reward``, the estimator over the rewards of ALL processes (so batch-level
  statistics such as ``advantage_scale: batch`` see the whole step), broadcast to tokens.
- token level (``reinforce_pp``): group baseline when G > 1 (REINFORCE++-baseline), then
  KL-penalised token rewards (Ziegler et al. placement), returns-to-go whitened over the tokens
  of this process.
- token level with a critic (``gae``): KL-penalised token rewards, GAE with the critic's
  values; optional whitening.

:func:`reward_transform_effect` probes how a config's advantages respond to an affine change of
the rewards; :func:`noise_correction_warnings` uses it to say when a noisy-verifier correction
(an affine map of a channel's 0/1 score) is cancelled by the advantages.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from posttrain.rl.algos import (
    advantage_estimator_spec,
    expand_to_tokens,
    get_advantage_estimator,
    group_normalized,
    kl_estimate,
    kl_penalized_rewards,
    masked_whiten,
)

Gather = Callable[[torch.Tensor], tuple[torch.Tensor, slice]]  # local (B,) -> (all ranks' (W*B,), my rows)


@dataclass
class AdvantageInputs:
    """What the estimators may read; tensors are this process's rows."""

    rewards: torch.Tensor              # (B,) shaped sequence rewards (channels + overlong penalty)
    response_mask: torch.Tensor        # (B, T) float, tokens that enter the loss
    old_logprobs: torch.Tensor | None  # (B, T); None under the on-policy shortcut (estimators here then never read it)
    ref_logprobs: torch.Tensor | None  # (B, T), None without a reference model
    values: torch.Tensor | None        # (B, T), critic only
    kl_coef: float                     # current beta (adaptive KL changes it)
    steps: dict[str, torch.Tensor] | None = None  # episodes' turns (step_tensors), step-level estimators only
    process_rewards: torch.Tensor | None = None   # (B, T) process reward channels' step rewards at step ends


def kl_in_reward(config, inputs: AdvantageInputs) -> float:
    """The beta applied to the reward: kl_coef when the KL is placed in the reward, else 0."""
    usable = inputs.ref_logprobs is not None and config.kl_placement == "reward"
    return inputs.kl_coef if usable else 0.0


def _knobs(config, spec) -> dict:
    """The estimator's keyword arguments, read from the config keys it declared."""
    return {arg: getattr(config, key) for arg, key in spec.knobs.items()}


def _sequence_level(config, spec, inputs: AdvantageInputs, gather: Gather):
    if inputs.process_rewards is not None:  # the schema refuses this pairing; never drop them silently
        raise ValueError(f"advantage_estimator {config.advantage_estimator!r} is sequence-level: it cannot use "
                         "the per-step rewards of a process_reward_model channel")
    rewards = inputs.rewards
    beta = kl_in_reward(config, inputs)
    if beta:
        kl_seq = kl_estimate(inputs.old_logprobs, inputs.ref_logprobs, config.kl_estimator,
                             inputs.response_mask).sum(dim=1)  # (B,) summed per-token KL
        rewards = rewards - beta * kl_seq
    all_rewards, mine = gather(rewards)
    estimator = get_advantage_estimator(config.advantage_estimator)
    advantages, stats = estimator(all_rewards, group_size=config.group_size, **_knobs(config, spec))
    return expand_to_tokens(advantages[mine], inputs.response_mask), None, stats


def _token_level(config, spec, inputs: AdvantageInputs, gather: Gather):
    """KL-penalised token rewards (Ziegler et al. placement) -> a token-level estimator; with a
    group baseline (REINFORCE++-baseline) the group mean leaves the scores first."""
    scores = inputs.rewards
    if spec.group_baseline and config.group_size > 1:
        scores, _ = group_normalized(scores, config.group_size, scale="none")
    ref = inputs.ref_logprobs if inputs.ref_logprobs is not None else inputs.old_logprobs
    token_rewards, _ = kl_penalized_rewards(scores, inputs.old_logprobs, ref, inputs.response_mask,
                                            kl_in_reward(config, inputs), config.kl_estimator)  # (B, T)
    if inputs.process_rewards is not None:  # per-step rewards at the step ends, beside the outcome
        token_rewards = token_rewards + inputs.process_rewards * inputs.response_mask
    extra = {}
    if spec.needs_critic:
        if inputs.values is None:
            raise ValueError(f"advantage_estimator {config.advantage_estimator!r} needs the critic's values")
        extra["values"] = inputs.values
    estimator = get_advantage_estimator(config.advantage_estimator)
    advantages, second = estimator(token_rewards, response_mask=inputs.response_mask, **extra, **_knobs(config, spec))
    if spec.needs_critic:
        return advantages, second, {}  # second = returns (B, T)
    return advantages, None, second


def step_end_token(tokenizer, completion_ids: list[int], char_end: int) -> int:
    """The first generated token with which the decoded completion reaches past character
    ``char_end`` (the token that holds it), or the last token if it never does. A binary search over
    prefix decodes (special tokens decode to nothing): O(log T) decodes per step end."""
    lo, hi = 0, len(completion_ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(completion_ids[:mid + 1], skip_special_tokens=True)) > char_end:
            hi = mid
        else:
            lo = mid + 1
    return lo


def process_token_rewards(scored, tokenizer, width: int) -> torch.Tensor | None:
    """(B, width) the process reward channels' weighted step rewards on the tokens that end the
    steps (posttrain.rl.algos.process.place_step_rewards), summed over channels; None without such
    a channel. An empty completion has no token and gets none."""
    from posttrain.rl.algos.process import place_step_rewards

    if not scored.process:
        return None
    completions = scored.rollout.completion_ids
    total = torch.zeros((len(completions), width), dtype=torch.float32)
    for channel in scored.process.values():
        ends = [[step_end_token(tokenizer, ids, e) for e in char_ends] if ids else []
                for ids, char_ends in zip(completions, channel.char_ends)]
        rewards = [r if ids else [] for r, ids in zip(channel.step_rewards, completions)]
        total += place_step_rewards(rewards, ends, width)
    return total


def single_steps(response_mask: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """The step structure of single-turn completions: one step per row, its tokens the generated
    ones, the G first steps of a prompt one step group (a step-level estimator then reduces to its
    episode level; used where no episodes exist, e.g. the reward-transform probe)."""
    rows = response_mask.shape[0]
    return {"step_rewards": torch.zeros(rows, 1, dtype=response_mask.dtype, device=response_mask.device),
            "step_mask": torch.ones(rows, 1, dtype=torch.bool, device=response_mask.device),
            "step_groups": (torch.arange(rows, device=response_mask.device) // group_size)[:, None],
            "token_steps": torch.where(response_mask > 0, 0, -1).long()}


def step_tensors(episodes: list[dict], rewards: torch.Tensor, group_size: int, width: int) -> dict[str, torch.Tensor]:
    """Episode records (posttrain.agents.episodes) -> the step structure a step-level estimator
    reads: ``step_rewards`` (B, K), the environment's reward per turn with the rest of the episode's
    reward (the outcome, shaped) added to its last turn, so each row sums to ``rewards``;
    ``step_mask`` (B, K); ``step_groups`` (B, K), one id per (prompt group, what preceded the turn);
    ``token_steps`` (B, T), the turn of each response token, -1 elsewhere."""
    rows = len(episodes)
    turns = max(1, max(len(e["steps"]) for e in episodes))
    step_rewards = torch.zeros(rows, turns, dtype=torch.float32)
    step_mask = torch.zeros(rows, turns, dtype=torch.bool)
    step_groups = torch.full((rows, turns), -1, dtype=torch.long)
    ids: dict[tuple[int, str], int] = {}
    for i, episode in enumerate(episodes):
        for k, step in enumerate(episode["steps"]):
            step_rewards[i, k] = step["reward"]
            step_mask[i, k] = True
            step_groups[i, k] = ids.setdefault((i // group_size, step["observation"]), len(ids))
        if episode["steps"]:
            last = len(episode["steps"]) - 1
            step_rewards[i, last] += float(rewards[i]) - float(step_rewards[i].sum())
    device = rewards.device
    return {"step_rewards": step_rewards.to(device), "step_mask": step_mask.to(device),
            "step_groups": step_groups.to(device),
            "token_steps": _per_token(episodes, width, lambda k, step: k).to(device)}


def token_turns(episodes: list[dict], width: int) -> torch.Tensor:
    """(B, T) long: each response token's place among its conversation's assistant turns (the
    episode steps' ``turn``, given turns counted; ``kl_turn_weights`` reads it), -1 where no
    generated token is."""
    return _per_token(episodes, width, lambda k, step: step["turn"])


def _per_token(episodes: list[dict], width: int, value: Callable[[int, dict], int]) -> torch.Tensor:
    """(B, T) long: ``value(k, step)`` on the response tokens of each episode's k-th step (its
    ``span``), -1 elsewhere."""
    table = torch.full((len(episodes), width), -1, dtype=torch.long)
    for i, episode in enumerate(episodes):
        for k, step in enumerate(episode["steps"]):
            start, end = step["span"]
            table[i, start:end] = value(k, step)
    return table


def _step_level(config, spec, inputs: AdvantageInputs, gather: Gather):
    """Multi-turn episodes (GiGPO): the estimator reads each episode's turns; no KL in the reward
    (the schema refuses it) and no gather (a prompt's episodes are all on one process)."""
    steps = inputs.steps
    if steps is None:
        steps = single_steps(inputs.response_mask, config.group_size)
        steps["step_rewards"] = inputs.rewards[:, None].to(inputs.response_mask.dtype)
    estimator = get_advantage_estimator(config.advantage_estimator)
    advantages, stats = estimator(inputs.rewards, group_size=config.group_size, **steps, **_knobs(config, spec))
    return advantages * (inputs.response_mask > 0).to(advantages.dtype), None, stats


_BY_LEVEL = {"sequence": _sequence_level, "token": _token_level, "step": _step_level}


def compute_advantages(config, inputs: AdvantageInputs, gather: Gather):
    """-> (advantages (B, T), returns (B, T) | None, stats). ``gather`` all-gathers (B,) rewards."""
    spec = advantage_estimator_spec(config.advantage_estimator)
    advantages, returns, estimator_stats = _BY_LEVEL[spec.level](config, spec, inputs, gather)
    if config.whiten_advantages:
        advantages = masked_whiten(advantages, inputs.response_mask)
    keep = inputs.response_mask.bool()
    picked = advantages[keep]
    # the estimator's own stats, e.g. GRPO's frac_zero_std (groups with no learning signal)
    stats = {f"advantages/{k}": v for k, v in estimator_stats.items()}
    if picked.numel():
        stats |= {"advantages/mean": picked.mean(), "advantages/std": picked.std(unbiased=False),
                 "advantages/min": picked.min(), "advantages/max": picked.max()}
    if returns is not None and picked.numel():
        stats["returns/mean"] = returns[keep].mean()
    return advantages, returns, stats


def _probe_inputs(config, generator: torch.Generator) -> tuple[torch.Tensor, AdvantageInputs]:
    """Seeded random rewards (B,) and advantage inputs for 4 groups of ``group_size`` completions
    of 1-5 tokens. Each group's rewards are a shuffled, scaled and shifted linspace, so no group's
    std is small enough for the estimators' eps to matter."""
    group, width, dtype = config.group_size, 5, torch.float64
    rows = 4 * group
    spread = torch.linspace(-1.0, 1.0, group, dtype=dtype)
    rewards = torch.cat([spread[torch.randperm(group, generator=generator)]
                         * (0.5 + torch.rand((), generator=generator, dtype=dtype))
                         + torch.randn((), generator=generator, dtype=dtype) for _ in range(4)])  # (B,)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(dtype)  # (B, T)
    old = -torch.rand(rows, width, generator=generator, dtype=dtype) * mask
    ref = old + 0.3 * torch.randn(rows, width, generator=generator, dtype=dtype) * mask if config.needs_reference else None
    critic = advantage_estimator_spec(config.advantage_estimator).needs_critic
    values = torch.randn(rows, width, generator=generator, dtype=dtype) * mask if critic else None
    return rewards, AdvantageInputs(rewards=rewards, response_mask=mask, old_logprobs=old, ref_logprobs=ref,
                                    values=values, kl_coef=config.kl_coef)


def reward_transform_effect(config, scale: float, shift: float) -> float | None:
    """What turning every completion's channel reward r into ``scale * r + shift`` does to the
    advantages of ``config``: the constant k when they become k times what they were (k = 1: the
    change cancels entirely), or None when they change in any other way (it matters).

    A probe, not a rule per estimator: :func:`compute_advantages` runs on seeded random inputs
    (:func:`_probe_inputs`), so a registered estimator and every knob on the way (KL in the
    reward, advantage_scale, whitening, gamma) count. Terms the change does not touch stay
    unscaled on both sides: the KL penalty (inside compute_advantages) and DAPO's soft overlong
    punishment. The built-ins, for scale > 0: ``group_normalized`` with advantage_scale group or
    batch gives k = 1 (mean-centring removes the shift, the std the scale; exact up to its eps);
    with advantage_scale none, and ``rloo``, k = scale; ``reinforce_pp`` without a KL in the
    reward, k = 1 when G > 1 or gamma = 1; ``raft`` (advantage 1 whatever the reward), k = 1; ``gae``
    (a critic's values), None. A KL penalty in the
    reward or the overlong punishment gives None for scale != 1 (the change then reweighs them).

    >>> from types import SimpleNamespace
    >>> grpo = SimpleNamespace(group_size=4, advantage_estimator="group_normalized", advantage_scale="group",
    ...                        kl_coef=0.0, needs_reference=False, kl_placement="loss", kl_estimator="k3",
    ...                        whiten_advantages=False, overlong_buffer=0)
    >>> round(reward_transform_effect(grpo, 1 / 0.7, -0.1 / 0.7), 4)
    1.0
    >>> grpo.advantage_scale = "none"  # Dr.GRPO
    >>> round(reward_transform_effect(grpo, 1 / 0.7, -0.1 / 0.7), 4)
    1.4286
    """
    generator = torch.Generator().manual_seed(0)
    rewards, inputs = _probe_inputs(config, generator)
    untouched = torch.zeros_like(rewards)
    if config.overlong_buffer > 0:
        untouched = -torch.rand(rewards.shape, generator=generator, dtype=rewards.dtype)

    def advantages(r: torch.Tensor) -> torch.Tensor:
        probe = replace(inputs, rewards=r + untouched)
        return compute_advantages(config, probe, lambda t: (t, slice(None)))[0] * inputs.response_mask

    before, after = advantages(rewards), advantages(scale * rewards + shift)
    norm = float((before * before).sum())
    if norm == 0.0:
        return 1.0 if not after.any() else None
    k = float((after * before).sum()) / norm
    return k if torch.allclose(after, k * before, rtol=1e-3, atol=1e-9) else None


def _correction_maps(config) -> dict[int, tuple[float, float]] | None:
    """rewards index -> (a, b): the correction maps that channel's 0/1 score r to a * r + b, for
    the corrected channels of non-zero weight; None when their rates cannot be read here (a
    missing rates_from report: the stage reports it when it starts)."""
    from posttrain.errors import PosttrainError
    from posttrain.rl.rewards import NoiseCorrection

    maps = {}
    for i, channel in enumerate(config.rewards):
        if channel.noise_correction == "none" or channel.weight == 0:
            continue
        try:
            fail, passed = NoiseCorrection(channel)(torch.tensor([0.0, 1.0]), channel.channel_name).tolist()
        except PosttrainError:
            return None
        maps[i] = (passed - fail, fail)
    return maps


def noise_correction_warnings(config, key: str) -> list[str]:
    """Why the stage's noisy-verifier corrections (``rewards[i].noise_correction``) do nothing, or
    only rescale the advantages, here; [] when they change the update.

    Both corrections of :mod:`posttrain.rl.algos.noisy` are affine in a channel's 0/1 score r
    (backward: (r - fp) / (1 - fp - fn); forward: r - (1 - fn)). The summed reward changes by the
    same affine map when every weighted channel is scaled alike (a single channel, say); then
    :func:`reward_transform_effect` says what the advantages make of it. Channels scaled
    differently are reweighed against each other (the correction matters), and so are rewards
    compared with absolute reward_filter_bands or a reward_filter_min.
    """
    maps = _correction_maps(config)
    if not maps or config.reward_filter == "bands" or config.reward_filter_min is not None:
        return []
    uncorrected = any(c.weight != 0 and i not in maps for i, c in enumerate(config.rewards))
    scales = {round(a, 9) for a, _ in maps.values()} | ({1.0} if uncorrected else set())
    if len(scales) != 1:
        return []
    scale = next(a for a, _ in maps.values())
    shift = sum(config.rewards[i].weight * b for i, (_, b) in maps.items())
    try:
        k = reward_transform_effect(config, scale, shift)
    except Exception:  # noqa: BLE001 - a user's estimator on probe data: no warning rather than a false one
        return []
    if k is None:
        return []
    keys = ", ".join(f"{key}.rewards[{i}].noise_correction" for i in maps)
    what = "; ".join(f"{config.rewards[i].noise_correction!r} maps the score r to {a:.4g} r {'-' if b < 0 else '+'} {abs(b):.4g}"
                     for i, (a, b) in maps.items())
    spec = advantage_estimator_spec(config.advantage_estimator)
    estimator = f"advantage_estimator {config.advantage_estimator!r}" + (
        f" with advantage_scale {config.advantage_scale!r}" if "advantage_scale" in spec.knobs.values() else "") + (
        " and whiten_advantages" if config.whiten_advantages else "")
    if abs(k - 1.0) < 1e-3:
        removed = "a shift" if abs(scale - 1.0) < 1e-9 else "a shift and a scale"
        return [(f"{keys}: has no effect in this stage ({what}): {estimator} removes {removed} common to all "
                 "rewards, so the advantages, and the training, are those without it. A correction changes the "
                 "update where rewards are used without a group baseline (gae with a critic) or, for the backward "
                 "one, without std scaling (advantage_scale none, rloo; there it rescales the advantages).")]
    return [(f"{keys}: only multiplies this stage's advantages by {k:.4g} ({what}): {estimator} removes the "
             "shift, so the update keeps the direction of the uncorrected reward and only its size changes "
             "(relative to the KL and entropy terms; Adam largely absorbs a constant scale).")]
