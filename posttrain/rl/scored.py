"""ScoredBatch: one step's completions with their rewards, the scoring layer's output.

It lives beside the scorer (posttrain.rl.rewards) rather than in the loop, so scoring never
imports the loop above it. Rows ``g*G .. g*G+G-1`` are the G completions of prompt group g.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from posttrain.rl.rollout.types import RolloutBatch


def _take_rollout(rollout: RolloutBatch, index: list[int], group_size: int) -> RolloutBatch:
    """The rows `index` of a RolloutBatch; prompt_index is renumbered to the new groups."""
    values = {f.name: [getattr(rollout, f.name)[i] for i in index]
              for f in fields(rollout) if isinstance(getattr(rollout, f.name), list)}
    values["prompt_index"] = [i // group_size for i in range(len(index))]
    return replace(rollout, **values)


def _concat_rollouts(rollouts: list[RolloutBatch], group_size: int) -> RolloutBatch:
    first = rollouts[0]
    values: dict[str, Any] = {}
    for f in fields(first):
        parts = [getattr(r, f.name) for r in rollouts]
        if isinstance(parts[0], list):
            values[f.name] = [x for part in parts for x in part]
        elif isinstance(parts[0], (int, float)):
            values[f.name] = sum(parts)  # generation_seconds: time spent over all rounds
    values["prompt_index"] = [i // group_size for i in range(len(values["completions"]))]
    return replace(first, **values)


@dataclass
class ProcessRewards:
    """A process reward channel's per-step rewards for a batch (posttrain.rl.process_rewards)."""

    step_rewards: list[list[float]]  # (B,) per completion, one reward per step (weight applied once weighted)
    char_ends: list[list[int]]       # (B,) per completion, the index of each step's last character in its text

    def weighted(self, weight: float) -> ProcessRewards:
        return ProcessRewards([[weight * r for r in row] for row in self.step_rewards], self.char_ends)

    def take(self, index: list[int]) -> ProcessRewards:
        return ProcessRewards([self.step_rewards[i] for i in index], [self.char_ends[i] for i in index])

    @staticmethod
    def concat(parts: list[ProcessRewards]) -> ProcessRewards:
        return ProcessRewards([r for p in parts for r in p.step_rewards], [e for p in parts for e in p.char_ends])


@dataclass
class ScoredBatch:
    """Completions of one step with their rewards, per channel and summed."""

    rollout: RolloutBatch                 # B rows (token ids, text, sampler log-probs)
    rows: list[dict[str, Any]]            # (B,) the dataset row each completion answers
    channel_scores: dict[str, torch.Tensor]  # name -> (B,) float, unweighted channel score
    channel_passed: dict[str, torch.Tensor]  # name -> (B,) bool, for channels that judge pass/fail
    channel_errors: dict[str, int]        # name -> items that failed (scored with the fallback)
    rewards: torch.Tensor                 # (B,) float, sum_c weight_c * channel_scores[c]
    group_size: int                       # G
    channel_timeouts: dict[str, int] = field(default_factory=dict)  # name -> items past timeout_s (not in errors)
    process: dict[str, ProcessRewards] = field(default_factory=dict)  # name -> weighted per-step rewards (not in `rewards`)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_groups(self) -> int:
        return len(self.rows) // self.group_size

    def select_groups(self, groups: list[int]) -> ScoredBatch:
        """The prompt groups `groups` (indices into 0..num_groups-1), in that order."""
        g = self.group_size
        index = [group * g + j for group in groups for j in range(g)]
        rows_t = torch.tensor(index, dtype=torch.long)
        return ScoredBatch(
            rollout=_take_rollout(self.rollout, index, g),
            rows=[self.rows[i] for i in index],
            channel_scores={k: v[rows_t] for k, v in self.channel_scores.items()},
            channel_passed={k: v[rows_t] for k, v in self.channel_passed.items()},
            channel_errors=dict(self.channel_errors),
            rewards=self.rewards[rows_t],
            group_size=g,
            channel_timeouts=dict(self.channel_timeouts),
            process={k: v.take(index) for k, v in self.process.items()},
        )

    @staticmethod
    def concat(batches: list[ScoredBatch]) -> ScoredBatch:
        """Join the batches of several sampling rounds (error and timeout counts add up)."""
        first = batches[0]
        errors = {k: sum(b.channel_errors.get(k, 0) for b in batches) for k in first.channel_errors}
        timeouts = {k: sum(b.channel_timeouts.get(k, 0) for b in batches) for k in first.channel_timeouts}
        return ScoredBatch(
            rollout=_concat_rollouts([b.rollout for b in batches], first.group_size),
            rows=[row for b in batches for row in b.rows],
            channel_scores={k: torch.cat([b.channel_scores[k] for b in batches]) for k in first.channel_scores},
            channel_passed={k: torch.cat([b.channel_passed[k] for b in batches]) for k in first.channel_passed},
            channel_errors=errors,
            rewards=torch.cat([b.rewards for b in batches]),
            group_size=first.group_size,
            channel_timeouts=timeouts,
            process={k: ProcessRewards.concat([b.process[k] for b in batches]) for k in first.process},
        )


class PendingScores:
    """Rewards being computed while the loop does other work (RewardScorer.submit).

    ``rollout``, ``group_size`` and ``len()`` are known at once; ``join(timer)`` returns the
    ScoredBatch (computed once; later calls return it again). It adds the scoring wall time to
    the timer's ``score`` phase and the time the caller actually waited to ``score_wait``, so
    ``score - score_wait`` is the scoring that overlapped other work.
    """

    def __init__(self, scorer, rollout, rows, group_size: int, future, later: list[int], timeout_s: float,
                 inputs: tuple[list[str], dict[str, list[Any]]]):
        self.rollout, self.rows, self.group_size = rollout, rows, group_size
        self._scorer, self._future, self._later, self._timeout_s = scorer, future, later, timeout_s
        self._inputs = inputs  # (completions, columns), as the background channels got them
        self._result: ScoredBatch | None = None

    def __len__(self) -> int:
        return len(self.rollout.completions)

    def join(self, timer=None) -> ScoredBatch:
        import time
        from concurrent.futures import TimeoutError as FutureTimeout

        if self._result is not None:
            return self._result
        completions, columns = self._inputs
        start = time.perf_counter()
        outs = self._scorer.score_channels(self._later, completions, columns)  # on this thread
        here = time.perf_counter() - start
        try:
            background, seconds = self._future.result(timeout=self._timeout_s)
        except FutureTimeout:
            raise TimeoutError(f"reward scoring of {len(self)} completions did not finish within "
                               f"{self._timeout_s:g} s (every item at its channel's timeout_s, + 60 s)") from None
        waited = time.perf_counter() - start
        self._result = self._scorer.combine(self.rollout, self.rows, {**background, **outs}, self.group_size)
        if timer is not None:
            timer.seconds["score"] += seconds + here
            timer.seconds["score_wait"] += waited
        return self._result


def joined(scored, timer=None) -> ScoredBatch:
    """A ScoredBatch, waiting for it when it is still pending."""
    return scored.join(timer) if isinstance(scored, PendingScores) else scored
