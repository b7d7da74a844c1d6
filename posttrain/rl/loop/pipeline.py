"""Asynchronous training with bounded staleness (``rollout: {mode: server, max_staleness: k}``).

With ``k > 0`` the rollout workers (posttrain.rl.rollout.service) generate the next steps' batches
while the trainer scores and updates: right after step t's batch arrives, the batches of steps
t+1 .. t+k are requested, and they queue in each worker ahead of the weight load that step t's
sync sends. A worker answers in order, so step t+k's batch is sampled with the weights of step
t-1 and trained at step t+k by the policy of version t+k-1: staleness exactly k once the pipeline
is full (fewer in the first k steps). This is the one-step-off-policy pipeline of PipelineRL and
verl, bounded by k as in AReaL (arXiv 2505.24298); unlike AReaL's interruptible generation, a
request is never cut mid-sequence by a weight update.

Every batch carries the version it was sampled with (the oldest over the workers' shares), and
:func:`stale` decides before anything is trained on it: a batch more than k versions behind the
policy is dropped and sampled again with the current weights (counted in
``rollout/dropped_batches``; by construction it happens only if versions skip, e.g. after a
restarted worker loaded newer weights early, which only lowers staleness). Old log-probs are the
trainer's (the proximal policy of AReaL's decoupled objective) and the sampler's travel with the
batch: ``policy_loss: decoupled_ppo`` or ``mismatch_correction: tis | mis`` weight the tokens by
them; by default neither is on, as in verl's one-step-off-policy mode (docs/distributed.md).

A checkpoint of step s records the prompt stream's position right after step s's prompts were
taken, not the live one: batches requested ahead are lost with the process and a resumed run
takes (and samples) them again, never a half-used batch. A curriculum draws step t+k's prompts
from what it learned through step t-1 (step t's batch is observed once its advantages are known,
after step t+k's prompts were requested), and its checkpoint of step s holds what it learned
through step s with the draws as of step s's prompts; a resumed run draws the next steps from
that. With DAPO's dynamic sampling the first round of a step is the one requested ahead; further
rounds (when it lacks groups with reward variance) are sampled at once with the current weights,
before the next steps are requested.

With an ``environment:`` the unit of work is an episode: the workers play the requested rows'
multi-turn episodes themselves (posttrain.rl.rollout.service_worker), environment and tools
loaded in each worker, so every turn of an episode samples with the same weights and its
staleness is the batch's. Synchronously (k = 0) episodes are played by the trainer's runner,
one generate request per turn, as in colocated mode.

With ``k = 0`` the loop does not use this module: it is today's synchronous loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from posttrain.rl.loop.probe import check_gap, trainer_scores
from posttrain.rl.loop.sampling import collect_rollouts, draw_round, score_round

if TYPE_CHECKING:
    from collections.abc import Callable

    from posttrain.rl.rollout.service import PendingRollout, RolloutService


def stale(batch_version: int, policy_version: int, max_staleness: int) -> bool:
    """True when a batch sampled with weights ``batch_version`` may not be trained by the policy of
    ``policy_version`` (it is more than ``max_staleness`` updates behind).

    >>> stale(3, 4, 1), stale(2, 4, 1), stale(4, 4, 0)
    (False, True, False)
    """
    if batch_version > policy_version:
        raise ValueError(f"a batch sampled with weights version {batch_version} cannot precede the policy "
                         f"(version {policy_version})")
    return policy_version - batch_version > max_staleness


@dataclass
class Requested:
    """A step's batch on its way: the prompts, how they are sampled, the request, and where the
    prompt stream's draws stood right after they were taken (what a checkpoint of this step records)."""

    rows: list[dict]
    sampling: Any
    pending: PendingRollout
    draw_state: dict


class RolloutPipeline:
    """Requests up to ``max_staleness`` steps ahead and hands each step its batch (see the module).

    The policy trained at step t has version t - 1 (the weights synced after step t - 1)."""

    def __init__(self, max_staleness: int, total_steps: int):
        self.max_staleness = max_staleness
        self.total_steps = total_steps
        self.ahead: dict[int, Requested] = {}
        self.draw_state: dict | None = None  # the stream's draws as of the last collected step's prompts
        self.max_seen = 0
        self.pending_probes: dict[int, list[list[float]]] = {}  # sync version -> the trainer's probe log-probs

    def _request(self, session, step: int) -> Requested:
        rows, sampling = draw_round(session, step, 0)
        return Requested(rows, sampling, submit(session, rows, sampling), session.stream.draw_state_dict())

    def collect(self, session, step: int, timer: Callable) -> tuple[Any, dict[str, float]]:
        """Step ``step``'s scored batch (scores pending with overlap_scoring), after requesting the
        batches of the next ``max_staleness`` steps -> (batch, rollout metrics)."""
        service: RolloutService = session.engine
        requested = self.ahead.pop(step, None) or self._request(session, step)
        policy_version = step - 1
        dropped = 0
        with timer("rollout_wait"):  # the trainer idles here while the workers are behind
            rollout = service.collect(requested.pending)
            while stale(rollout.metadata["weight_version"], policy_version, self.max_staleness):
                dropped += 1  # never trained on: the same prompts again, with the weights the workers have now
                rollout = service.collect(submit(session, requested.rows, requested.sampling))
        config = session.config
        staleness = policy_version - rollout.metadata["weight_version"]
        self.max_seen = max(self.max_seen, staleness)
        stats = {"rollout/staleness": float(staleness), "rollout/staleness_max": float(self.max_seen),
                 "rollout/dropped_batches": float(dropped), "rollout/generation_s": rollout.generation_seconds,
                 "tokens_per_s/generate": sum(map(len, rollout.completion_ids)) / max(rollout.generation_seconds, 1e-9)}
        if config.dynamic_sampling:  # more rounds, if the first lacks groups with signal: fresh, before the next request
            first = score_round(session, requested.rows, rollout, timer)
            batch, sampling_stats = collect_rollouts(session, step, timer, first=first)
            stats.update(sampling_stats)
        else:
            batch = score_round(session, requested.rows, rollout, timer, config.overlap_scoring)
        self.draw_state = session.stream.draw_state_dict() if config.dynamic_sampling else requested.draw_state
        for ahead in range(step + 1, min(step + self.max_staleness, self.total_steps) + 1):
            if ahead not in self.ahead:  # queued before this step's weight load: sampled with version step - 1
                self.ahead[ahead] = self._request(session, ahead)
        return batch, stats


def submit(session, rows: list[dict], sampling) -> PendingRollout:
    """Request the rows' batch from the workers: completions, or with an ``environment:`` whole
    multi-turn episodes, which the workers play themselves (an episode samples with one weights
    version, and the trainer does not step environments while it should be updating)."""
    service: RolloutService = session.engine
    if session.episodes is None:
        return service.submit_generate([row["prompt"] for row in rows], sampling)
    key = f"stages.{getattr(session.ctx, 'name', 'rl')}.environment"
    return service.submit_episodes(rows, sampling, session.config.environment, session.config.max_tokens, key=key)


def sync_service(session, step: int) -> dict[str, float]:
    """The weight sync of step ``step`` in server mode -> the probe's metrics.

    A shared copy is rewritten once the workers acknowledged the load that read it before (k
    copies for k = max_staleness: the load of the k-th sync before); each worker scores the probe
    prompts right after loading. Synchronously (k = 0) the loop waits for that answer at once
    (nothing else is queued); with k > 0 the load sits behind requested batches, so the comparison
    with the trainer's scores of the same weights happens once that load is waited for anyway
    (k syncs later, or at the stage's end) and a failed sync stops the stage up to k steps later."""
    service: RolloutService = session.engine
    pipeline: RolloutPipeline | None = getattr(session, "pipeline", None)
    stats = finish_probe(session)
    start = time.perf_counter()
    service.sync_weights(session.unwrapped.policy, version=step, probe=session.probe)
    stats["sync/copy_s"] = time.perf_counter() - start
    if session.probe:
        probe = (step, trainer_scores(session.model, session.probe, session.tokenizer.pad_token_id or 0))
        if pipeline is None:
            return {**stats, **_compare(session, probe, service.load_results())}
        pipeline.pending_probes[step] = probe[1]
    elif pipeline is None:
        service.load_results()
    return stats


def finish_probe(session, final: bool = False) -> dict[str, float]:
    """Collect the loads a sync now waits for anyway (``final``: all of them) and compare their
    probe scores with the trainer's (k > 0). With k weight copies the newest k - 1 loads are left
    in flight: waiting for them would wait for the batches queued ahead of them."""
    service: RolloutService = session.engine
    pipeline = getattr(session, "pipeline", None)
    keep = 0 if final or pipeline is None else service.weight_buffers - 1
    stats: dict[str, float] = {}
    for version, results in service.settled_loads(keep):
        trainer_lp = pipeline.pending_probes.pop(version, None) if pipeline is not None else None
        if trainer_lp is not None:  # several at the stage's end: the worst gap is logged
            compared = _compare(session, (version, trainer_lp), results)
            if compared.get("sync/probe_gap", 0.0) >= stats.get("sync/probe_gap", 0.0):
                stats = compared
    return stats


def _compare(session, probe: tuple[int, list[list[float]]], results: list[dict]) -> dict[str, float]:
    step, trainer_lp = probe
    scored = [r["probe"] for r in results if r.get("probe") is not None]  # a restarted worker loaded from the copy
    return check_gap(session, step, scored, trainer_lp)
