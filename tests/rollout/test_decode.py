"""The hf engine's sampling loop: the tokens transformers' generate picks with the same warpers and
draw, while finished rows leave the forward; the inverse-CDF draw has the softmax's distribution."""
from __future__ import annotations

import pytest
import torch
from rollout_helpers import PROMPTS
from transformers import GenerationConfig, LogitsProcessor, StoppingCriteriaList, StopStringCriteria

from posttrain.rl.rollout import decode, render_prompts
from posttrain.rl.rollout.decode import inverse_cdf, sample, warpers

MAX_TOKENS = 20


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


class _InverseCdfChoice(LogitsProcessor):
    """Makes greedy ``generate`` pick the loop's draw: one float64 uniform per row and step, the
    inverse CDF of the warped scores' softmax, every other token masked."""

    def __call__(self, input_ids, scores):
        uniform = torch.rand(scores.shape[0], dtype=torch.float64)
        chosen = inverse_cdf(torch.softmax(scores, dim=-1), uniform)
        return torch.full_like(scores, float("-inf")).scatter(1, chosen[:, None], 0.0)


def _generate_reference(model, ids, mask, eos: int, pad: int, settings: dict, seed: int, stop=None):
    """transformers' generate, each row cut after its first eos (or stop string). Sampled settings:
    greedy over the warped scores with the inverse-CDF draw appended (no multinomial)."""
    processors = []
    if settings["temperature"] > 0:
        processors = [*warpers(settings["temperature"], settings["top_k"], settings["top_p"]), _InverseCdfChoice()]
    config = GenerationConfig(max_new_tokens=MAX_TOKENS, eos_token_id=[eos], pad_token_id=pad, do_sample=False)
    criteria = StoppingCriteriaList([stop] if stop else [])
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, stopping_criteria=criteria,
                         logits_processor=processors)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    return rows


def _rows(tokenizer, n: int) -> list[list[int]]:
    return [ids for ids in render_prompts(tokenizer, PROMPTS) for _ in range(n)]


def _frequent_token(model, ids, mask, pad: int, settings: dict) -> int:
    """The token that starts the most rows' tails: used as eos so that rows end at varied steps (the
    lively tiny model rarely samples its real eos)."""
    rows = _generate_reference(model, ids, mask, pad, pad, settings, seed=5)
    counts: dict[int, int] = {}
    for row in rows:
        for token in set(row[2:]):
            counts[token] = counts.get(token, 0) + 1
    return max(counts, key=counts.get)


@pytest.mark.parametrize("settings", [
    {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
    {"temperature": 0.7, "top_k": 5, "top_p": 1.0},
    {"temperature": 1.3, "top_k": 0, "top_p": 0.9},
])
@pytest.mark.parametrize("compact_at", [0.0, 0.25, 2.0])  # at once, the default, never
def test_sampled_tokens_equal_generate(tiny_model, tokenizer, settings, compact_at, monkeypatch):
    """Same seed, same tokens as generate with the same warpers and draw, although rows finish at
    different steps and leave the batch (at once, at the default quarter, or never: finished rows
    then ride along, fed pad). Compactions are counted: the immediate case must cover some."""
    pad = tokenizer.pad_token_id
    ids, mask = _left_padded(_rows(tokenizer, 4), pad)
    eos = _frequent_token(tiny_model, ids, mask, pad, settings)
    expected = _generate_reference(tiny_model, ids, mask, eos, pad, settings, seed=5)
    compactions = []
    original = decode.DynamicCache.batch_select_indices

    def counted(cache, indices):
        compactions.append(len(indices))
        return original(cache, indices)

    monkeypatch.setattr(decode.DynamicCache, "batch_select_indices", counted)
    torch.manual_seed(5)
    out = sample(tiny_model, ids, mask, max_new_tokens=MAX_TOKENS, eos_token_ids=[eos], pad_token_id=pad,
                 processors=warpers(settings["temperature"], settings["top_k"], settings["top_p"]), do_sample=True,
                 compact_at=compact_at)
    assert out.tokens == expected
    assert out.finish_reasons == ["stop" if row[-1] == eos else "length" for row in expected]
    lengths = sorted(map(len, expected))
    assert lengths[0] < lengths[-1], lengths
    if compact_at == 0.0:
        assert compactions
    if compact_at > 1:
        assert not compactions


def test_greedy_with_stop_string_equals_generate(tiny_model, tokenizer):
    """A stop string ends a row where generate's StopStringCriteria does; greedy needs no warper."""
    pad = tokenizer.pad_token_id
    ids, mask = _left_padded(_rows(tokenizer, 1), pad)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    greedy = {"temperature": 0}
    full = _generate_reference(tiny_model, ids, mask, eos, pad, greedy, seed=0)
    text = tokenizer.decode(full[2])
    stop = text[len(text) // 3: len(text) // 3 + 2]
    criteria = StopStringCriteria(tokenizer=tokenizer, stop_strings=[stop])
    expected = _generate_reference(tiny_model, ids, mask, eos, pad, greedy, seed=0, stop=criteria)
    out = sample(tiny_model, ids, mask, max_new_tokens=MAX_TOKENS, eos_token_ids=[eos], pad_token_id=pad,
                 processors=warpers(0, 0, 1.0), do_sample=False, stop=lambda rows: criteria(rows, None))
    # generate pads a stopped row to the end; the loop ends it at the token that completed the stop string
    cut = [row[:len(got)] for row, got in zip(expected, out.tokens)]
    assert out.tokens == cut and len(out.tokens[2]) < len(full[2])
    assert all(p == pad for row, got in zip(expected, out.tokens) for p in row[len(got):] if got[-1] != eos)
    assert out.finish_reasons[2] == "stop"


def test_logprobs_are_processed_scores_of_the_chosen_tokens(tiny_model, tokenizer):
    """Each value is log_softmax(warped logits)[token]: with top_k 3, over the 3 best logits."""
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    [prompt] = render_prompts(tokenizer, PROMPTS[:1])
    ids, mask = _left_padded([prompt], pad)
    torch.manual_seed(2)
    out = sample(tiny_model, ids, mask, max_new_tokens=8, eos_token_ids=[eos], pad_token_id=pad,
                 processors=warpers(0.8, 3, 1.0), do_sample=True)
    tokens = out.tokens[0]
    with torch.no_grad():
        logits = tiny_model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1].double() / 0.8
    top = logits.topk(3, dim=-1)
    for t, token in enumerate(tokens):
        assert token in top.indices[t].tolist()
        expected = logits[t, token] - torch.logsumexp(top.values[t], dim=0)
        assert out.logprobs[0][t] == pytest.approx(float(expected), abs=1e-5)


def test_inverse_cdf_draws_the_softmax_distribution():
    """200,000 draws from one distribution with a masked token: frequencies within 4.5 standard
    errors of the probabilities, the masked token never drawn."""
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05], dtype=torch.float32)
    n = 200_000
    generator = torch.Generator().manual_seed(0)
    tokens = inverse_cdf(probs.expand(n, -1), torch.rand(n, dtype=torch.float64, generator=generator))
    freq = torch.bincount(tokens, minlength=5).double() / n
    se = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert freq[1] == 0
    assert torch.all((freq - probs.double()).abs() <= 4.5 * se + 1e-12), (freq, probs)


def test_inverse_cdf_interval_ends():
    """u = 0 draws the first token with probability > 0 and u just below 1 the last one;
    unnormalised rows work; u = 1 (the clamp) still gives the last token, never the masked tail;
    a row with nothing to draw raises."""
    probs = torch.tensor([[0.0, 0.25, 0.75, 0.0], [0.0, 0.25, 0.75, 0.0], [0.0, 2.0, 6.0, 0.0]])
    below_one = 1 - 2.0 ** -53
    uniform = torch.tensor([0.0, below_one, 0.25], dtype=torch.float64)
    assert inverse_cdf(probs, uniform).tolist() == [1, 2, 2]
    assert inverse_cdf(probs[:1], torch.tensor([1.0], dtype=torch.float64)).tolist() == [2]
    with pytest.raises(FloatingPointError, match="positive finite total"):
        inverse_cdf(torch.zeros(1, 4), torch.tensor([0.5], dtype=torch.float64))
    with pytest.raises(FloatingPointError, match="positive finite total"):
        inverse_cdf(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0.5], dtype=torch.float64))


def test_warpers_follow_generate_order():
    names = [type(w).__name__ for w in warpers(0.5, 4, 0.9)]
    assert names == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]
    assert list(warpers(0, 4, 0.9)) == [] and list(warpers(1.0, 0, 1.0)) == []


def test_non_finite_logits_raise(tiny_model, tokenizer):
    """A diverged model (NaN weights) stops generation with a message instead of sampling token 0."""
    import copy

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))
    ids, mask = _left_padded(_rows(tokenizer, 1), tokenizer.pad_token_id)
    with pytest.raises(FloatingPointError, match="not finite at generated token 0"):
        sample(broken, ids, mask, max_new_tokens=4, eos_token_ids=[0], pad_token_id=tokenizer.pad_token_id,
               processors=warpers(1.0, 0, 1.0), do_sample=True)
