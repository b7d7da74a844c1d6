"""Prompts in, scored completions out: the prompt stream and (dynamic) sampling rounds."""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch

from posttrain.common.seeds import derive_seed
from posttrain.rl.algos.shaping import groups_with_signal
from posttrain.rl.scored import PendingScores, ScoredBatch

if TYPE_CHECKING:
    from posttrain.agents.episodes import EpisodeRunner
    from posttrain.rl.loop.config import BatchPlan, OnlineRLConfig
    from posttrain.rl.loop.curriculum import CurriculumStream
    from posttrain.rl.loop.dist import Processes
    from posttrain.rl.rewards import RewardScorer
    from posttrain.rl.rollout.types import RolloutEngine


class PromptStream:
    """Dataset rows in a seeded order, reshuffled each epoch; its position is checkpointed.

    >>> stream = PromptStream([{"prompt": str(i)} for i in range(4)], seed=1)
    >>> [r["prompt"] for r in stream.take(5)], stream.state_dict()
    (['1', '2', '3', '0', '1'], {'epoch': 1, 'position': 1})
    """

    def __init__(self, rows: list[Any], seed: int):
        if not rows:
            raise ValueError("PromptStream needs at least one row")
        self.rows = rows
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order: list[int] | None = None

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            self._order = list(range(len(self.rows)))
            random.Random(derive_seed(self.seed, "prompt_order", self.epoch)).shuffle(self._order)
        return self._order

    def take(self, count: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < count:
            order = self._epoch_order()
            if self.position >= len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
                continue
            out.append(self.rows[order[self.position]])
            self.position += 1
        return out

    def state_dict(self, draw_state: dict[str, int] | None = None) -> dict[str, int]:
        """The position; ``draw_state``: an earlier :meth:`draw_state_dict` to record instead."""
        return dict(draw_state) if draw_state is not None else self.draw_state_dict()

    def draw_state_dict(self) -> dict[str, int]:
        """Where the draws stand (all of a plain stream's state)."""
        return {"epoch": self.epoch, "position": self.position}

    def observe(self, *step_outcome: Any) -> dict[str, float]:
        """A plain stream learns nothing from a step (a curriculum does: posttrain.rl.loop.curriculum)."""
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


class RolloutState(Protocol):
    """What the rollout phase reads of the session (RLSession provides it)."""

    config: OnlineRLConfig
    plan: BatchPlan
    procs: Processes
    stream: PromptStream | CurriculumStream
    engine: RolloutEngine
    scorer: RewardScorer
    episodes: EpisodeRunner | None


def draw_round(session: RolloutState, step: int, round_index: int) -> tuple[list[dict], Any]:
    """The step's prompts (this process's share, taken from the stream) and their SamplingConfig."""
    from posttrain.rl.rollout import SamplingConfig

    config, procs = session.config, session.procs
    rows = session.stream.take(config.prompts_per_step)[procs.rank::procs.size]
    sampling = SamplingConfig(n=config.group_size, temperature=config.temperature, top_p=config.top_p,
                              top_k=config.top_k, max_tokens=config.max_tokens, stop=list(config.stop),
                              seed=derive_seed(config.seed, "sampling", step, round_index, procs.rank))
    return rows, sampling


def score_round(session: RolloutState, rows: list[dict], rollout, timer: Callable,
                overlap: bool = False) -> ScoredBatch | PendingScores:
    """Score the completions of ``rows`` (``overlap``: submit the scoring and return at once)."""
    config = session.config
    answered = [rows[i] for i in rollout.prompt_index]
    if overlap:
        return session.scorer.submit(rollout, answered, config.group_size)
    with timer("score"):
        return session.scorer.score(rollout, answered, config.group_size)


def generate_round(session: RolloutState, step: int, round_index: int, timer: Callable,
                   overlap: bool = False) -> ScoredBatch | PendingScores:
    """Take the step's prompts (this process's share), generate G completions each, score them.

    ``overlap``: return as soon as generation is done, with the scores on their way
    (PendingScores: ``joined(batch, timer)`` before they are needed)."""
    rows, sampling = draw_round(session, step, round_index)
    with timer("generate"):
        if session.episodes is not None:  # multi-turn: the environment's steps are timed with generation
            rollout = session.episodes.run(session.engine, rows, sampling)
        else:
            rollout = session.engine.generate([row["prompt"] for row in rows], sampling)
    return score_round(session, rows, rollout, timer, overlap)


def collect_rollouts(session: RolloutState, step: int, timer: Callable,
                     first: ScoredBatch | None = None) -> tuple[ScoredBatch | PendingScores, dict[str, float]]:
    """One step's scored completions; with dynamic sampling, only groups with reward variance.

    Without dynamic sampling (and with ``overlap_scoring``) the scores are still pending: the
    experience joins them after the log-probs.

    DAPO (arXiv 2503.14476, Sec. 3.2) samples until the batch holds ``prompts_per_step`` groups
    whose rewards are not all equal. We stop after ``max_sampling_rounds`` rounds and, where the
    batch is still short, fill it with dropped (all-equal) groups, which carry zero group-relative
    advantage; DAPO's code keeps sampling instead, verl raises. The fill is logged.

    ``first``: the step's first round, already generated and scored (asynchronous training requests
    it ahead; posttrain.rl.loop.pipeline).
    """
    config, procs = session.config, session.procs
    if not config.dynamic_sampling:
        return generate_round(session, step, 0, timer, overlap=config.overlap_scoring), {}
    share = session.plan.prompts_per_process
    kept: list[ScoredBatch] = []
    dropped: list[ScoredBatch] = []
    drawn = rounds = 0
    drawn_reward = 0.0
    while True:
        scored = first if rounds == 0 and first is not None else generate_round(session, step, rounds, timer)
        rounds += 1
        drawn += scored.num_groups
        drawn_reward += float(scored.rewards.sum())
        signal = groups_with_signal(scored.rewards, config.group_size)
        kept.append(scored.select_groups(torch.nonzero(signal).flatten().tolist()))
        dropped.append(scored.select_groups(torch.nonzero(~signal).flatten().tolist()))
        have = sum(b.num_groups for b in kept)
        if procs.min(have) >= share or rounds >= config.max_sampling_rounds:
            break
    pool = ScoredBatch.concat([b for b in kept + dropped if len(b)])
    batch = pool.select_groups(list(range(share)))
    stats = {"sampling/rounds": rounds, "sampling/groups_drawn": drawn,
             "sampling/groups_dropped": sum(b.num_groups for b in dropped),
             "sampling/groups_filled": max(0, share - have),
             # the kept groups' reward is biased toward the middle; this one is what the policy earns
             "sampling/reward_drawn": drawn_reward / max(1, drawn * config.group_size)}
    return batch, stats
