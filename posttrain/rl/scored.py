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
        )
