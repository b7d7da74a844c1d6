"""Token entropy of the policy and the entropy bonus term.

Shapes: B = sequences, T = response tokens, V = vocabulary.
"""

from __future__ import annotations

import torch


def entropy_from_logits(
    logits: torch.Tensor, response_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token entropy ``H_t = -sum_v p_v log p_v`` of softmax(logits) -> (B, T).

    Computed as ``logsumexp(z) - sum_v softmax(z)_v z_v`` (no log of a probability, so no
    -inf * 0 at vanishing probabilities). Positions with ``response_mask == 0`` get 0.
    Differentiable (use it for an entropy bonus); detach it for logging.

    >>> entropy_from_logits(torch.zeros(1, 1, 4))   # uniform over 4 tokens: log 4
    tensor([[1.3863]])
    """
    # logits: (B, T, V)
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)  # (B, T)
    if response_mask is not None:
        if response_mask.shape != entropy.shape:
            raise ValueError(
                f"response_mask {tuple(response_mask.shape)} must be (B, T) = "
                f"{tuple(entropy.shape)}"
            )
        entropy = torch.where(response_mask.bool(), entropy, torch.zeros_like(entropy))
    return entropy


def entropy_bonus(
    entropies: torch.Tensor,
    response_mask: torch.Tensor,
    coef: float,
    global_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Entropy term to ADD to the loss: ``-coef * mean_tokens(H)`` -> ``(scalar, stats)``.

    The mean runs over response tokens (normalised by ``global_tokens`` when the batch is
    sharded, see :mod:`posttrain.rl.algos.aggregation`), independent of how the policy term is
    aggregated; TRL 1.16 does the same (``loss - entropy_coef * masked_mean(entropies)``).
    Maximising entropy (Williams & Peng 1991; the ``c2 S[pi]`` term of PPO, arXiv 1707.06347
    eq. 9) keeps exploration alive. Stats: ``entropy``, the detached per-token mean over THIS
    batch's tokens (not divided by ``global_tokens``), so that averaging it over micro-batches and
    processes gives the batch's mean entropy; the loss term alone carries the global share.
    """
    # entropies, response_mask: (B, T)
    if entropies.shape != response_mask.shape:
        raise ValueError(
            f"entropies {tuple(entropies.shape)} and response_mask "
            f"{tuple(response_mask.shape)} differ"
        )
    mask = response_mask.to(entropies.dtype)
    local_count = mask.sum().clamp(min=1.0)
    count = local_count if global_tokens is None else global_tokens
    total = (entropies * mask).sum()
    return -coef * total / count, {"entropy": total.detach() / local_count}
