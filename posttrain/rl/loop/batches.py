"""Typed containers passed between the phases of one RL step.

    RolloutBatch (posttrain.rl.rollout)  --score-->  ScoredBatch (posttrain.rl.scored)  --collate-->  RolloutTensors
        --log-probs, advantages-->  ExperienceBatch  --minibatches-->  update

B = completions in the step (rows ``g*G .. g*G+G-1`` are the G completions of prompt group g),
P = prompt width (prompts left-padded), T = response width (responses right-padded). The
sequence tensors are (B, P+T) with every response starting at column P, so the response tensors
are (B, T) and column t of a response tensor is predicted by the logits at column P+t-1.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class RolloutTensors:
    """A ScoredBatch's token ids as padded tensors (see the module docstring for the layout)."""

    input_ids: torch.Tensor         # (B, P+T) long; pad_token_id where attention_mask is 0
    attention_mask: torch.Tensor    # (B, P+T) long
    position_ids: torch.Tensor      # (B, P+T) long; counts real tokens only (left padding)
    response_mask: torch.Tensor     # (B, T) float; 1 on generated tokens (0 on an episode's environment tokens)
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
    kl_weights: torch.Tensor | None = None     # (B, T) factors on the KL term by turn (kl_turn_weights)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> ExperienceBatch:
        """Rows `index` (a (b,) long tensor) of every per-row tensor."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ExperienceBatch(**{k: v[index] if isinstance(v, torch.Tensor) else v for k, v in values.items()})


def sequence_advantages(exp: ExperienceBatch, tensors: RolloutTensors) -> torch.Tensor:
    """(B,) float64 on the CPU: each completion's mean token advantage over its generated tokens (its
    sequence advantage for sequence-level estimators; 0 for a row overlong filtering zeroed)."""
    generated = tensors.response_mask.detach().double().cpu()                        # (B, T)
    advantages = exp.advantages.detach().double().cpu()                              # (B, T)
    return (advantages * generated).sum(1) / generated.sum(1).clamp(min=1.0)
