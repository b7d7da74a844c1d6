"""The hf engine's sampling loop: transformers' model forward, KV cache and logits warpers, with
less work and memory than ``generate`` where RL rollouts do not need it.

What it keeps from ``generate`` (tested in tests/rollout/test_decode.py): left-padded prompts with
position ids ``cumsum(mask) - 1``, the model's own ``DynamicCache``, and the warpers ``generate``
builds for sampling (temperature, then top-k, then top-p; :func:`warpers`). Greedy decoding gives
``generate``'s tokens.

What it does differently, and why:
- The draw is the inverse CDF (:func:`inverse_cdf`): one uniform per row and step, the token whose
  interval of the cumulative probabilities holds it. ``torch.multinomial(probs, 1)``, which
  ``generate`` uses, draws an exponential for every row x vocabulary entry and costs 20 ns each on
  CPU: a quarter of the quickstart's generation time, and 0.2 s per token for 64 rows of Qwen2's
  151,936-token vocabulary. The distribution is the same; the random stream is not, so a seed gives
  other samples than ``generate`` does. The loop draws a uniform for every row of the batch,
  finished or not, so a row's samples do not depend on when finished rows leave the batch.
- Finished rows leave the forward. ``generate`` runs every row until the last one stops; RL
  completions vary in length (the quickstart's: 12-30 of 48 tokens), so most rows idle for most
  of the tail. Rows that hit eos or a stop string are dropped from the batch and from the KV
  cache (``DynamicCache.batch_select_indices``) once at least a quarter of the batch has finished
  (each compaction copies the cache once, about the cost of one decode step's cache update).
- It keeps the chosen tokens' log-probs only: one (rows,) value per step, the log-softmax of the
  processed scores at the sampled token (what vLLM reports as ``processed_logprobs``).
  ``generate(output_scores=True)`` keeps every step's (rows x vocabulary) scores, 3.7 GB for
  128 rows x 48 tokens of Qwen2's 151,936-token vocabulary.
- The prompt's forward computes the logits of its last position only (``logits_to_keep=1``).
- transformers' ``InfNanRemoveLogitsProcessor`` is not applied: it changes only non-finite logits,
  which a float32 model does not produce unless it is broken; the loop raises on them instead of
  sampling from repaired ones.
- Only the recipe's temperature, top-k and top-p shape the distribution. ``generate`` would also
  apply processors a model's ``generation_config.json`` sets (a repetition penalty, say); the
  trainer's log-probs are those of the tempered, top-k/top-p distribution, so sampling from
  anything else would make every sample off-policy.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

COMPACT_AT = 0.25  # drop finished rows once at least this fraction of the forward's rows have finished


def warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """The sampling warpers ``generate`` applies for these settings, in its order.

    Temperature 0 means greedy: no warper (the scores are the raw logits, as in ``generate``)."""
    out = LogitsProcessorList()
    if temperature == 0:
        return out
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        out.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return out


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` (R, V), drawn by inverting the cumulative distribution at
    ``uniform`` (R,), values in [0, 1): the first token whose cumulative probability exceeds
    ``uniform * total``. Token i is drawn with probability ``probs[i] / probs.sum()`` (inverse
    transform sampling, Devroye, *Non-Uniform Random Variate Generation*, 1986, ch. 2; the sums are
    float64, so a token's interval is off by at most ~1e-16 x V). Tokens of probability 0 (top-k /
    top-p masked) have empty intervals and are never drawn where the sums are sequential (CPU); a
    parallel scan (CUDA) can give one an interval of an ulp, a chance of ~1e-16 per draw. A row
    without a positive finite total (all masked, or overflowed scores) raises."""
    cdf = torch.cumsum(probs, dim=-1, dtype=torch.float64)
    total = cdf[:, -1:]
    if not bool((torch.isfinite(total) & (total > 0)).all()):
        raise FloatingPointError("sampling probabilities without a positive finite total (every token masked, "
                                 "or scores that overflowed: a temperature too close to 0?)")
    tokens = torch.searchsorted(cdf, uniform.to(torch.float64)[:, None] * total, right=True)
    # u = 1 (outside [0, 1), or a uniform rounded up) would land past the end: take the last token
    # whose interval is not empty, the first index where the sums reach the total
    last = torch.searchsorted(cdf, total.contiguous())  # a (B, 1) view of the last column
    return torch.minimum(tokens, last).squeeze(1)


@dataclass
class Decoded:
    """What :func:`sample` generated, per row of its input."""

    tokens: list[list[int]]        # the completion's ids, up to and including eos / the stop string's last token
    logprobs: list[list[float]]    # log-softmax of the processed scores at each chosen token
    finish_reasons: list[str]      # "stop" (eos or a stop string) or "length"


def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions of left-padded rows: 0 at each row's first real token (``generate``'s rule)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


@torch.no_grad()
def sample(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
           eos_token_ids: list[int], pad_token_id: int, processors: LogitsProcessorList, do_sample: bool,
           stop: Callable[[torch.Tensor], torch.Tensor] | None = None, compact_at: float = COMPACT_AT) -> Decoded:
    """Generate up to ``max_new_tokens`` for each left-padded row of ``input_ids`` (R, P).

    ``stop(ids)`` (optional) gets every row's ids so far, prompt included (R, P + t), and says
    which rows' text now ends with a stop string (R,) bool. Finished rows leave the batch once they
    are at least ``compact_at`` of it. The model must be in eval mode.
    """
    rows, prompt_width = input_ids.shape
    device = input_ids.device
    ids = torch.full((rows, prompt_width + max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    ids[:, :prompt_width] = input_ids
    logprobs = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.full((rows,), max_new_tokens, dtype=torch.long)   # "length" unless a row stops
    stopped = torch.zeros(rows, dtype=torch.bool)
    eos = torch.tensor(eos_token_ids, device=device)
    active = torch.arange(rows, device=device)    # the rows in the forward's batch, in order
    mask = attention_mask.long()
    positions = _position_ids(mask)
    cache = DynamicCache(config=_text_config(model))
    last_only = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, **last_only)
    positions = positions[:, -1:]
    for t in range(max_new_tokens):
        width = prompt_width + t
        logits = out.logits[:, -1].float()   # (A, V)
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError(f"the model's logits are not finite at generated token {t}: "
                                     "its weights have diverged (NaN or inf)")
        scores = processors(ids[active, :width], logits)
        if do_sample:
            uniform = torch.rand(rows, dtype=torch.float64, device=device)  # every row: compaction-free stream
            next_tokens = inverse_cdf(torch.softmax(scores, dim=-1), uniform[active])
        else:
            next_tokens = scores.argmax(dim=-1)
        finished = stopped[active.cpu()].to(device)
        next_tokens = torch.where(finished, pad_token_id, next_tokens)
        chosen = torch.log_softmax(scores, dim=-1).gather(1, next_tokens[:, None]).squeeze(1)
        live = active[~finished]
        logprobs[live, t] = chosen[~finished]
        ids[active, width] = next_tokens
        ends = torch.isin(next_tokens, eos) & ~finished
        if stop is not None:
            ends |= stop(ids[active, :width + 1]) & ~finished
        for row in active[ends].tolist():
            stopped[row] = True
            lengths[row] = t + 1
        if bool(stopped.all()) or t == max_new_tokens - 1:
            break
        finished = stopped[active.cpu()].to(device)
        done = int(finished.sum())
        if done and done >= compact_at * len(active):
            keep = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            active, mask, positions, next_tokens = active[keep], mask[keep], positions[keep], next_tokens[keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        positions = positions + 1
        out = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True)
    lengths_list = lengths.tolist()
    generated, values = ids[:, prompt_width:].cpu(), logprobs.cpu()
    return Decoded(tokens=[generated[i, :n].tolist() for i, n in enumerate(lengths_list)],
                   logprobs=[values[i, :n].tolist() for i, n in enumerate(lengths_list)],
                   finish_reasons=["stop" if s else "length" for s in stopped.tolist()])


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the causal LM's forward takes ``logits_to_keep`` (a PEFT wrapper passes it on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _text_config(model: torch.nn.Module):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
