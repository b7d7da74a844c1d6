"""The optimisation phase: PPO epochs over minibatches, gradient accumulation, clipping.

The loss of one micro-batch is assembled from posttrain.rl.algos pieces:

    per_token = policy_loss(logprobs, old_logprobs, advantages)      # ppo_clip | gspo | cispo | pg
              * mismatch_weights                                      # tis/mis, when on
              + kl_coef * kl_estimate(logprobs, ref_logprobs)         # kl_placement: loss
    loss = aggregate(per_token, mode, global counts)
         + entropy_bonus(entropy)                                     # entropy_coef > 0
         + vf_coef * aggregate(value_loss(values, old_values, returns), "token-mean")   # critic

On-policy shortcut (posttrain.rl.loop.experience.update_is_on_policy): the experience then has
no ``old_logprobs`` and ``old_logprobs = logprobs.detach()`` of this very forward (ratio = 1,
exactly the loss and gradients of a separate pi_old forward, since the optimizer steps only after
the last micro-batch). The metrics of pi_old (``mismatch/*``, ``kl``, ``kl/sequence``) are then
computed from these detached log-probs over the whole minibatch and returned with the update's.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import torch

from posttrain.common.seeds import derive_seed
from posttrain.rl.algos import aggregate, entropy_bonus, get_policy_loss, kl_estimate, value_loss
from posttrain.rl.loop.batches import ExperienceBatch
from posttrain.rl.loop.experience import forward_splits, policy_logprob_stats, update_is_on_policy
from posttrain.rl.loop.packing import ForwardLayout, MicroSplit, padded_layout, split_layout
from posttrain.rl.loop.tokens import forward_responses

if TYPE_CHECKING:
    from accelerate import Accelerator

    from posttrain.rl.algos import AdaptiveKLController, FixedKLController
    from posttrain.rl.loop.config import BatchPlan, OnlineRLConfig
    from posttrain.rl.loop.dist import Processes
    from posttrain.rl.loop.models import ActorCritic


class UpdateState(Protocol):
    """What the policy/critic update reads of the session (RLSession provides it)."""

    config: OnlineRLConfig
    plan: BatchPlan
    procs: Processes
    accelerator: Accelerator
    model: torch.nn.Module
    unwrapped: ActorCritic
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    kl_controller: FixedKLController | AdaptiveKLController


class MeanStats:
    """Running weighted means of scalar stats (detached tensors or floats).

    A micro-batch's per-token stats (ratio, clip fractions, entropy) are means over its own
    tokens; weighted by its token count they average to the minibatch's per-token mean, however
    the minibatch was split (packed micro-batches differ in size)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)

    def add(self, stats: dict[str, Any], prefix: str = "", weight: float = 1.0) -> None:
        for key, value in stats.items():
            if value is None:
                continue
            self.sums[prefix + key] += float(value) * weight
            self.counts[prefix + key] += weight

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] if self.counts[k] else 0.0 for k in self.sums}


def micro_loss(session: UpdateState, mb: ExperienceBatch, global_tokens: torch.Tensor,
               global_seqs: torch.Tensor, layout: ForwardLayout | None = None
               ) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
    """The differentiable loss of one micro-batch, normalised by the minibatch's global counts
    -> (loss, detached stats, detached log-probs (b, T) of this forward).

    ``layout``: how the forward reads ``mb``'s tokens (packed, or by default the padded layout)."""
    config = session.config
    if layout is None:
        layout = padded_layout(mb.input_ids, mb.attention_mask, mb.position_ids, mb.prompt_width)
    logprobs, entropy, values = forward_responses(session.model, layout, config.temperature, with_entropy=True,
                                                  entropy_grad=config.entropy_coef > 0)
    mask = mb.response_mask
    name = config.policy_loss_name
    # on-policy shortcut: pi_old is the policy of this forward (ratio 1, same gradients)
    old_logprobs = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
    loss_fn = get_policy_loss(name)
    knobs = {arg: getattr(config, key) for arg, key in loss_fn.spec.knobs.items()}  # the keys it declared
    inputs = {arg: getattr(mb, name) for arg, name in loss_fn.spec.inputs.items()}  # e.g. the sampler's log-probs
    per_token, stats = loss_fn(logprobs, old_logprobs, mb.advantages, response_mask=mask, **knobs, **inputs)
    if mb.loss_weights is not None:
        per_token = per_token * mb.loss_weights
    kl_coef = session.kl_controller.value
    if config.kl_placement == "loss" and mb.ref_logprobs is not None and kl_coef > 0:
        kl = kl_estimate(logprobs, mb.ref_logprobs, config.kl_estimator, mask)
        per_token = per_token + kl_coef * (kl if mb.kl_weights is None else kl * mb.kl_weights)
    policy = aggregate(per_token, mask, config.loss_aggregation, max_tokens=config.max_tokens,
                       global_tokens=global_tokens, global_seqs=global_seqs)
    bonus, entropy_stats = entropy_bonus(entropy, mask, config.entropy_coef, global_tokens=global_tokens)
    loss = policy + bonus if config.entropy_coef > 0 else policy
    stats = {**stats, **entropy_stats, "loss/policy": policy.detach()}
    if values is not None:
        per_token_v, value_stats = value_loss(values, mb.values, mb.returns, mask, clip_range=config.value_clip)
        critic = aggregate(per_token_v, mask, "token-mean", global_tokens=global_tokens)
        loss = loss + config.vf_coef * critic
        stats.update(value_stats, **{"loss/value": critic.detach()})
    return loss, stats, logprobs.detach()


def clip_gradients(session: UpdateState) -> dict[str, float]:
    """Clip the policy's and the critic's gradients each to its own bound -> their pre-clip norms.

    One optimizer holds both models, so the gradients are unscaled once (fp16) and each model's
    norm is then taken and clipped on its own; calling ``accelerator.clip_grad_norm_`` per model
    would unscale twice (accelerate raises under fp16). After the backward the gradients are the
    all-reduced ones under DDP, so a local norm is the global norm. Under DeepSpeed the engine
    clips every parameter together by ``gradient_clipping`` (= max_grad_norm; the schema rejects a
    different critic bound there) and only its global norm is known: it is logged as ``grad_norm``.
    """
    from accelerate.utils import DistributedType

    acc, model, config = session.accelerator, session.unwrapped, session.config
    if acc.distributed_type == DistributedType.DEEPSPEED:
        norm = acc.clip_grad_norm_(model.parameters(), config.max_grad_norm)  # the engine's global norm
        return {} if norm is None else {"grad_norm": float(norm)}
    acc.unscale_gradients()
    groups = [("grad_norm", model.policy, config.max_grad_norm)]
    if model.critic is not None:
        groups.append(("grad_norm/critic", model.critic, config.critic_max_grad_norm))
    return {key: float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)) for key, module, max_norm in groups}


def loss_divisor(session: UpdateState, micro_batches: int) -> int:
    """What the backward divides each micro-batch's loss by: the accumulation steps accelerate
    counts, or under DeepSpeed the engine's (its config's grad_accum)."""
    from accelerate.utils import DistributedType

    if session.accelerator.distributed_type == DistributedType.DEEPSPEED:
        return session.config.grad_accum
    return micro_batches


@contextmanager
def accumulating(acc: Accelerator, micro_batches: int):
    """Accumulate over exactly ``micro_batches`` backward passes, synchronising on the last.

    Packed micro-batches come in a count set per minibatch by the token budget, not the fixed
    grad_accum the Accelerator was built with; its counter is set for this minibatch and restored."""
    saved = acc.gradient_accumulation_steps
    acc.gradient_accumulation_steps, acc.step = micro_batches, 0
    try:
        yield
    finally:
        acc.gradient_accumulation_steps, acc.step = saved, 0


def _split_part(mb: ExperienceBatch, split: MicroSplit) -> tuple[ExperienceBatch, ForwardLayout]:
    """A micro-batch's rows and their layout; a filler's rows carry no loss (response mask 0)."""
    part = mb.select(split.rows.to(mb.input_ids.device))
    if not split.real:
        part.response_mask = torch.zeros_like(part.response_mask)
    layout = split_layout(split, part.input_ids, part.attention_mask, part.position_ids, part.prompt_width)
    return part, layout


def accumulated_step(session: UpdateState, micro_batches: int, micro_loss_fn) -> dict[str, float]:
    """One optimizer step over ``micro_batches`` backward passes -> the gradient norms (pre-clip).

    ``micro_loss_fn(i)`` returns micro-batch i's loss, normalised by the minibatch's GLOBAL counts
    (so the pieces of all processes SUM to the minibatch loss). DDP averages gradients over
    processes and the backward divides by the accumulation steps, so each loss is scaled to undo
    both; the optimizer steps after the last micro-batch only (accelerate's accumulation)."""
    acc = session.accelerator
    scale = session.procs.size * loss_divisor(session, micro_batches)
    norms: dict[str, float] = {}
    with accumulating(acc, micro_batches):
        for i in range(micro_batches):
            with acc.accumulate(session.model):
                acc.backward(micro_loss_fn(i) * scale)
                if acc.sync_gradients:
                    norms = clip_gradients(session)
                session.optimizer.step()
                if acc.sync_gradients:
                    session.scheduler.step()
                session.optimizer.zero_grad()
    return norms


def minibatch_step(session: UpdateState, mb: ExperienceBatch) -> dict[str, float] | None:
    """One optimizer step over a minibatch's micro-batches (``grad_accum`` row slices, or packed
    by ``max_tokens_per_microbatch``); without ``old_logprobs`` (on-policy shortcut) also pi_old's
    ``mismatch/*`` and ``kl`` metrics. None, and no step, when no token of the minibatch enters
    the loss on any process (e.g. RAFT kept no answer): Adam's momentum would move the weights on a
    zero gradient."""
    config = session.config
    global_tokens = session.procs.sum(mb.response_mask.sum())
    if float(global_tokens) == 0.0:
        return None
    global_seqs = session.procs.sum(float(len(mb)))
    splits = forward_splits(session, mb.attention_mask, mb.prompt_width, len(mb) // config.grad_accum)
    stats = MeanStats()
    totals: dict[str, float] = defaultdict(float)
    pi_old = torch.zeros_like(mb.response_mask)  # detached log-probs of this forward, in the minibatch's row order

    def one(i: int) -> torch.Tensor:
        split = splits[i]
        part, layout = _split_part(mb, split)
        loss, micro_stats, logprobs = micro_loss(session, part, global_tokens, global_seqs, layout)
        if split.real:
            pi_old[split.rows.to(pi_old.device)] = logprobs
            stats.add({k: v for k, v in micro_stats.items() if not k.startswith("loss/")},
                      weight=float(part.response_mask.sum()))
            for key in ("loss/policy", "loss/value"):
                if key in micro_stats:
                    totals[key] += float(micro_stats[key])
            totals["loss"] += float(loss.detach())
        return loss

    stats.add(accumulated_step(session, len(splits), one))
    # each process's loss is its share of the global-count-normalised loss; metrics are averaged
    # over processes afterwards, so scale the shares to make that average the global loss
    out = {**stats.means(), **{k: v * session.procs.size for k, v in totals.items()}}
    if mb.old_logprobs is None:
        # as collate's response_mask: generated tokens (an episode's environment tokens have no
        # sampler log-prob and are not in the loss mask; overlong-filtered rows still count)
        generated = mb.attention_mask[:, mb.prompt_width:].to(torch.float32)
        generated = generated * ((mb.response_mask > 0) | ~torch.isnan(mb.sampler_logprobs)).float()
        pi_old_stats = policy_logprob_stats(config, pi_old, mb.sampler_logprobs, generated, mb.ref_logprobs)
        out.update({k: float(v) for k, v in pi_old_stats.items()})
    return out


def ppo_update(session: UpdateState, exp: ExperienceBatch, step: int) -> dict[str, float]:
    """``ppo_epochs`` passes over the step's experience in shuffled minibatches -> mean stats."""
    config = session.config
    if exp.old_logprobs is None and not update_is_on_policy(config, len(exp)):
        raise ValueError("experience without old_logprobs needs an on-policy update (one epoch, one minibatch)")
    size = session.plan.minibatch
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "minibatch_order", step))
    stats = MeanStats()
    steps = 0
    for _ in range(config.ppo_epochs):
        order = torch.randperm(len(exp), generator=generator).to(exp.input_ids.device)
        for start in range(0, len(exp), size):
            minibatch = minibatch_step(session, exp.select(order[start:start + size]))
            if minibatch is not None:
                stats.add(minibatch)
                steps += 1
    out = stats.means()
    out["optimizer_steps"] = steps
    out["optimizer_steps_skipped"] = config.ppo_epochs * (len(exp) // size) - steps  # minibatches without a loss token
    return out
