"""Selected-token log-probs and entropy from hidden states, in chunks: no (B, T, V) logits.

The full-vocabulary logits of a batch are its largest tensor by far (Qwen2's 151,936-token
vocabulary: 32 x 1024 tokens is ~20 GB of float32 logits). Here the lm_head runs over chunks of
the N selected positions; under autograd each chunk is checkpointed (torch.utils.checkpoint,
non-reentrant), so only its (N,) results are kept and the backward recomputes one chunk's logits
at a time. Peak memory is one chunk's logits, chosen by ``chunk_bytes``; the results are the
full computation's (tests/rl_loop/test_logits.py: 1e-6 on values and gradients). Liger-Kernel's
fused linear cross-entropy and verl's chunked entropy do the same kind of recomputation.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from posttrain.rl.algos import entropy_from_logits

FLOAT_BYTES = 4  # the logits are upcast to float32 before the softmax


def chunk_tokens(chunk_bytes: int, vocab: int) -> int:
    """Positions per chunk so that one chunk's float32 logits take at most ``chunk_bytes``.

    >>> chunk_tokens(256 * 2**20, vocab=151_936)
    441
    """
    return max(1, chunk_bytes // (FLOAT_BYTES * vocab))


def _chunk(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module, temperature: float,
           with_entropy: bool, entropy_grad: bool):
    logits = lm_head(hidden).float() / temperature  # (n, V)
    logprobs = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    if not with_entropy:
        return logprobs, None
    if entropy_grad:
        return logprobs, entropy_from_logits(logits[None])[0]
    with torch.no_grad():  # the metric alone: nothing kept for the backward
        return logprobs, entropy_from_logits(logits.detach()[None])[0]


def selected_logprobs(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, temperature: float,
                      chunk: int, with_entropy: bool = False, entropy_grad: bool = False):
    """log softmax(lm_head(hidden) / temperature) at ``targets`` -> (logprobs (N,), entropy (N,) | None).

    ``hidden`` (N, H) are the final hidden states at the positions that predict ``targets`` (N,).
    Dividing by the sampling temperature makes these the log-probs of the distribution sampled
    from. Entropy is differentiable only with ``entropy_grad`` (an entropy bonus). ``chunk``
    positions per lm_head call; with gradients and more than one chunk, each is checkpointed.
    """
    if hidden.shape[0] <= chunk:
        return _chunk(hidden, targets, lm_head, temperature, with_entropy, entropy_grad)
    recompute = torch.is_grad_enabled()
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        args = (hidden[start:start + chunk], targets[start:start + chunk], lm_head, temperature, with_entropy,
                entropy_grad)
        parts.append(checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args))
    logprobs = torch.cat([p[0] for p in parts])
    entropy = torch.cat([p[1] for p in parts]) if with_entropy else None
    return logprobs, entropy
