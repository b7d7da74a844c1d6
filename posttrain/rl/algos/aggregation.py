"""Reduce a per-token loss (B, T) to the scalar that is differentiated.

Modes (``loss`` and ``mask`` are (B, T); n_i = tokens of sequence i; N = sum_i n_i; S = number
of sequences; L = ``max_tokens``):

==========================  ============================================  ====================
mode                        value                                         TRL 1.16 loss_type
==========================  ============================================  ====================
``token-mean``              sum_it loss_it / N                            dapo, cispo (global
                                                                          N), bnpo (local N)
``seq-mean-token-mean``     1/S sum_i (sum_t loss_it / n_i)               grpo
``seq-mean-token-sum``      1/S sum_i sum_t loss_it                       (luspo's reduction)
``seq-mean-token-sum-norm`` sum_it loss_it / (S * L)                      dr_grpo (L =
                                                                          max_completion_length)
==========================  ============================================  ====================

Why it matters: ``seq-mean-token-mean`` gives each token of a long answer less weight, which
favours short correct and long wrong answers (Dr.GRPO, arXiv 2503.20783, Sec. 3.1; DAPO,
arXiv 2503.14476, Sec. 3.3 "token-level policy gradient loss"). ``token-mean`` weighs every token
equally; ``seq-mean-token-sum-norm`` divides by a constant so no length enters at all.

TRL 1.16 (``GRPOTrainer._compute_loss``, checked in tests/rl_math/test_trl_parity.py): grpo,
bnpo and dr_grpo normalise each micro-batch by its own counts and divide by the number of
accumulation steps; dapo and cispo divide by ``num_items_in_batch``, the token count of the whole
generation batch across processes and accumulation steps (the exact global token mean).

Data parallel / gradient accumulation rule: when a batch is split into shards (ranks or
micro-batches), normalise every shard by the GLOBAL counts -- ``global_tokens`` = N of the
whole batch, ``global_seqs`` = S of the whole batch -- and SUM the shard losses (their
gradients). The sum then equals the full-batch loss exactly, for every mode; a per-shard mean
would not (shards with fewer tokens would count more). DDP all-reduces gradients as a MEAN, so
multiply each rank's loss by ``world_size`` (or all-reduce with SUM). Accumulating micro-batches
with ``loss.backward()`` already sums. ``tests/rl_math/test_aggregation.py`` checks both.

>>> import torch
>>> loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
>>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
>>> aggregate(loss, mask, "token-mean")              # (1+2+3+4)/4
tensor(2.5000)
>>> aggregate(loss, mask, "seq-mean-token-mean")     # (6/3 + 4/1)/2
tensor(3.)
"""

from __future__ import annotations

import torch

AGGREGATION_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)

# TRL 1.16 GRPOConfig.loss_type -> (our policy loss, our aggregation mode, count scope). "local":
# counts of the micro-batch (then / accumulation steps); "global": counts of the generation batch.
TRL_LOSS_TYPES: dict[str, tuple[str, str, str]] = {
    "grpo": ("ppo_clip", "seq-mean-token-mean", "local"),
    "bnpo": ("ppo_clip", "token-mean", "local"),
    "dr_grpo": ("ppo_clip", "seq-mean-token-sum-norm", "local"),
    "dapo": ("ppo_clip", "token-mean", "global"),
    "cispo": ("cispo", "token-mean", "global"),
}


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    max_tokens: int | None = None,
    global_tokens: float | torch.Tensor | None = None,
    global_seqs: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce ``loss`` (B, T) over the positions where ``mask`` (B, T) is 1 -> scalar.

    ``mode`` is one of :data:`AGGREGATION_MODES` (table in the module docstring).
    ``max_tokens`` (L) is the constant of ``seq-mean-token-sum-norm`` (Dr.GRPO: the maximum
    completion length; required for that mode and ignored otherwise). ``global_tokens`` /
    ``global_seqs`` replace this shard's N / S when the batch is split across ranks or
    micro-batches; sum the shard results (module docstring). Without them the local counts are
    used, with N clamped to >= 1 and, in ``seq-mean-token-mean``, n_i clamped to >= 1 (an
    all-masked row contributes 0 but still counts in S, as in TRL).
    """
    if loss.dim() != 2 or loss.shape != mask.shape:
        raise ValueError(
            f"loss and mask must both be (B, T); got {tuple(loss.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.to(loss.dtype)
    masked = loss * mask  # (B, T)
    num_seqs = loss.shape[0] if global_seqs is None else global_seqs
    if mode == "token-mean":
        num_tokens = mask.sum().clamp(min=1.0) if global_tokens is None else global_tokens
        return masked.sum() / num_tokens
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B,)
        return per_seq.sum() / num_seqs
    if mode == "seq-mean-token-sum":
        return masked.sum() / num_seqs
    if mode == "seq-mean-token-sum-norm":
        if max_tokens is None or max_tokens <= 0:
            raise ValueError(
                f"mode 'seq-mean-token-sum-norm' needs max_tokens > 0 (the max completion "
                f"length), got {max_tokens!r}"
            )
        return masked.sum() / (num_seqs * max_tokens)
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGGREGATION_MODES}")
