"""Typed containers passed between the phases of one RL step.

    RolloutBatch (posttrain.rl.rollout)  --score-->  ScoredBatch  --collate-->  RolloutTensors
        --log-probs, advantages-->  ExperienceBatch  --minibatches-->  update

B = completions in the step (rows ``g*G .. g*G+G-1`` are the G completions of prompt group g),
P = prompt width (prompts left-padded), T = response width (responses right-padded). The
sequence tensors are (B, P+T) with every response starting at column P, so the response tensors
are (B, T) and column t of a response tensor is predicted by the logits at column P+t-1.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch


def _take_rollout(rollout: Any, index: list[int], group_size: int) -> Any:
    """The rows `index` of a RolloutBatch; prompt_index is renumbered to the new groups."""
    values = {f.name: [getattr(rollout, f.name)[i] for i in index]
              for f in fields(rollout) if isinstance(getattr(rollout, f.name), list)}
    values["prompt_index"] = [i // group_size for i in range(len(index))]
    return replace(rollout, **values)


def _concat_rollouts(rollouts: list[Any], group_size: int) -> Any:
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

    rollout: Any                          # RolloutBatch: B rows (token ids, text, sampler log-probs)
    rows: list[dict[str, Any]]            # (B,) the dataset row each completion answers
    channel_scores: dict[str, torch.Tensor]  # name -> (B,) float, unweighted channel score
    channel_passed: dict[str, torch.Tensor]  # name -> (B,) bool, for channels that judge pass/fail
    channel_errors: dict[str, int]        # name -> items that failed (scored with the fallback)
    rewards: torch.Tensor                 # (B,) float, sum_c weight_c * channel_scores[c]
    group_size: int                       # G

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
        )

    @staticmethod
    def concat(batches: list[ScoredBatch]) -> ScoredBatch:
        """Join the batches of several sampling rounds (error counts add up)."""
        first = batches[0]
        errors = {k: sum(b.channel_errors.get(k, 0) for b in batches) for k in first.channel_errors}
        return ScoredBatch(
            rollout=_concat_rollouts([b.rollout for b in batches], first.group_size),
            rows=[row for b in batches for row in b.rows],
            channel_scores={k: torch.cat([b.channel_scores[k] for b in batches]) for k in first.channel_scores},
            channel_passed={k: torch.cat([b.channel_passed[k] for b in batches]) for k in first.channel_passed},
            channel_errors=errors,
            rewards=torch.cat([b.rewards for b in batches]),
            group_size=first.group_size,
        )


@dataclass
class RolloutTensors:
    """A ScoredBatch's token ids as padded tensors (see the module docstring for the layout)."""

    input_ids: torch.Tensor         # (B, P+T) long; pad_token_id where attention_mask is 0
    attention_mask: torch.Tensor    # (B, P+T) long
    position_ids: torch.Tensor      # (B, P+T) long; counts real tokens only (left padding)
    response_mask: torch.Tensor     # (B, T) float; 1 on generated tokens
    sampler_logprobs: torch.Tensor  # (B, T) float; the engine's log-probs, NaN where absent
    truncated: torch.Tensor         # (B,) bool; finish_reason == "length"
    prompt_width: int               # P

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) generated tokens per completion."""
        return self.response_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> RolloutTensors:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return RolloutTensors(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})


@dataclass
class ExperienceBatch:
    """Everything the update needs, per completion; ``select`` takes minibatches of rows."""

    input_ids: torch.Tensor          # (B, P+T) long
    attention_mask: torch.Tensor     # (B, P+T) long
    position_ids: torch.Tensor       # (B, P+T) long
    response_mask: torch.Tensor      # (B, T) float; 1 on tokens that enter the loss (overlong-filtered rows are 0)
    old_logprobs: torch.Tensor | None  # (B, T) log pi_old(y_t), trainer, temperature-scaled; None when the
                                       # update is on-policy (it then uses its own, detached; see experience.py)
    sampler_logprobs: torch.Tensor   # (B, T) log p_sampler(y_t) from the engine, NaN where absent
    advantages: torch.Tensor         # (B, T) per-token advantages (sequence advantages broadcast)
    prompt_width: int                # P
    ref_logprobs: torch.Tensor | None = None   # (B, T) log pi_ref(y_t); None without a KL term
    values: torch.Tensor | None = None         # (B, T) V_old(s_t) at rollout time (critic only)
    returns: torch.Tensor | None = None        # (B, T) value targets (gae only)
    loss_weights: torch.Tensor | None = None   # (B, T) sampler/trainer mismatch IS weights (tis/mis)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> ExperienceBatch:
        """Rows `index` (a (b,) long tensor) of every per-row tensor."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ExperienceBatch(**{k: v[index] if isinstance(v, torch.Tensor) else v for k, v in values.items()})
