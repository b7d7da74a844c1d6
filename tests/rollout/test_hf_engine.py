"""The transformers rollout engine: grouping, greedy parity, sampler log-probs, stops, sync."""
from __future__ import annotations

import math

import pytest
import torch
from rollout_helpers import (
    PROMPTS,
    check_batch_shapes_and_grouping,
    hf_greedy,
    perturb,
    teacher_forced_logprobs,
)

from posttrain.errors import ConfigError
from posttrain.models import load_model
from posttrain.rl.rollout import HFEngine, SamplingConfig, make_engine, render_prompts

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def engine(tiny_dir, tokenizer):
    return make_engine("hf", str(tiny_dir), tokenizer)


def test_batch_shapes_and_grouping(engine):
    check_batch_shapes_and_grouping(engine, exact_finish_reason=True)


def test_chat_prompt_uses_template(engine):
    [ids] = render_prompts(engine.tokenizer, [PROMPTS[0]])
    text = engine.tokenizer.decode(ids)
    assert text == "<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n<|im_start|>assistant\n"


def test_greedy_equals_hf_generate(engine, tiny_model):
    """Left-padded batched greedy rows equal unpadded one-prompt HF generate, token for token."""
    batch = engine.generate(PROMPTS, SamplingConfig(n=2, temperature=0, max_tokens=MAX_TOKENS))
    expected = [hf_greedy(tiny_model, ids, MAX_TOKENS) for ids in batch.prompt_ids]
    assert batch.completion_ids == expected
    assert len({t for ids in expected for t in ids}) >= 20  # varied output, not a repeat
    # Greedy: the two rows of a prompt are identical, log-probs are the untempered ones.
    for ids, lps, prompt in zip(batch.completion_ids, batch.sampler_logprobs, batch.prompt_ids):
        assert lps == pytest.approx(teacher_forced_logprobs(tiny_model, prompt, ids), abs=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_are_tempered_logsoftmax(engine, tiny_model, temperature):
    """log p_sampler(token) = log_softmax(logits / T)[token] of the teacher-forced model."""
    batch = engine.generate(PROMPTS[:2], SamplingConfig(n=4, temperature=temperature,
                                                        max_tokens=12, seed=3))
    for ids, lps, prompt in zip(batch.completion_ids, batch.sampler_logprobs, batch.prompt_ids):
        expected = teacher_forced_logprobs(tiny_model, prompt, ids, temperature)
        assert lps == pytest.approx(expected, abs=1e-4)


def test_top_k_logprobs_renormalise_over_kept_tokens(engine, tiny_model):
    """With top_k=2 each token's log-prob is its log-softmax over the 2 best logits only."""
    batch = engine.generate(PROMPTS[:1], SamplingConfig(n=4, top_k=2, max_tokens=8, seed=1))
    for ids, lps, prompt in zip(batch.completion_ids, batch.sampler_logprobs, batch.prompt_ids):
        full = torch.tensor([prompt + ids])
        with torch.no_grad():
            logits = tiny_model(full).logits[0, len(prompt) - 1:-1].double()
        top2 = logits.topk(2, dim=-1)
        for t, token in enumerate(ids):
            assert token in top2.indices[t].tolist()
            expected = logits[t, token] - torch.logsumexp(top2.values[t], dim=0)
            assert lps[t] == pytest.approx(float(expected), abs=1e-4)


def test_seed_reproducible_and_rng_untouched(engine):
    sampling = SamplingConfig(n=4, max_tokens=12, seed=7)
    state = torch.random.get_rng_state()
    first = engine.generate(PROMPTS, sampling)
    assert torch.equal(torch.random.get_rng_state(), state)  # the trainer's RNG is untouched
    again = engine.generate(PROMPTS, sampling)
    other = engine.generate(PROMPTS, sampling.model_copy(update={"seed": 8}))
    assert first.completion_ids == again.completion_ids
    assert first.completion_ids != other.completion_ids
    # Samples within a group differ (n completions are independent draws).
    assert len({tuple(ids) for ids in first.completion_ids[:4]}) > 1


def test_stop_string_cuts_completion(engine):
    """A stop string taken from the middle of a greedy completion ends it exactly there."""
    greedy = SamplingConfig(n=1, temperature=0, max_tokens=MAX_TOKENS)
    full = engine.generate(PROMPTS[2:3], greedy)
    text, ids = full.completions[0], full.completion_ids[0]
    stop = text[len(text) // 3: len(text) // 3 + 3]
    assert stop.strip() and text.find(stop) > 0
    cut = engine.generate(PROMPTS[2:3], greedy.model_copy(update={"stop": [stop]}))
    assert cut.finish_reasons == ["stop"]
    assert cut.completions[0] == text[:text.find(stop)]
    got = cut.completion_ids[0]
    assert got == ids[:len(got)] and len(got) < len(ids)
    # The last token is the one that completed the stop string.
    decoded = engine.tokenizer.decode(got, skip_special_tokens=True)
    assert stop in decoded and stop not in engine.tokenizer.decode(got[:-1],
                                                                    skip_special_tokens=True)


def test_max_tokens_finishes_with_length(engine):
    batch = engine.generate(PROMPTS, SamplingConfig(n=2, temperature=0, max_tokens=3))
    for ids, reason in zip(batch.completion_ids, batch.finish_reasons):
        assert (reason, len(ids)) == ("length", 3) or (reason == "stop"
                                                       and ids[-1] in engine.eos_token_ids)
    assert "length" in batch.finish_reasons


def test_batch_size_splits_without_changing_greedy(engine, tiny_dir, tokenizer):
    small = HFEngine(str(tiny_dir), tokenizer, batch_size=3)
    greedy = SamplingConfig(n=2, temperature=0, max_tokens=MAX_TOKENS)
    assert small.generate(PROMPTS, greedy).completion_ids == \
        engine.generate(PROMPTS, greedy).completion_ids


def test_sync_copies_weights_into_loaded_model(tiny_dir, tokenizer):
    engine = HFEngine(str(tiny_dir), tokenizer)
    policy = load_model(tiny_dir).eval()
    perturb(policy, seed=5)
    greedy = SamplingConfig(n=1, temperature=0, max_tokens=MAX_TOKENS)
    before = engine.generate(PROMPTS, greedy).completion_ids
    engine.sync_weights(policy)
    after = engine.generate(PROMPTS, greedy)
    assert after.completion_ids != before
    assert after.completion_ids == [hf_greedy(policy, ids, MAX_TOKENS) for ids in after.prompt_ids]
    assert engine.model.lm_head.weight is engine.model.model.embed_tokens.weight  # still tied


def test_shared_module_needs_no_sync(tiny_dir, tokenizer):
    """Colocated: the engine generates with the live module; sync_weights is a no-op."""
    policy = load_model(tiny_dir).train()  # a trainer's module, in training mode
    engine = make_engine("hf", str(tiny_dir), tokenizer, model=policy)
    greedy = SamplingConfig(n=1, temperature=0, max_tokens=MAX_TOKENS)
    before = engine.generate(PROMPTS, greedy).completion_ids
    perturb(policy, seed=6)
    engine.sync_weights(policy)
    assert engine.model is policy
    assert policy.training  # generate() restored the training mode it found
    after = engine.generate(PROMPTS, greedy)
    assert after.completion_ids != before
    assert after.completion_ids == [hf_greedy(policy.eval(), ids, MAX_TOKENS)
                                    for ids in after.prompt_ids]


def test_sync_rejects_mismatched_policy(tiny_dir, untied_dir, tokenizer):
    engine = HFEngine(str(tiny_dir), tokenizer)
    with pytest.raises(ConfigError, match="lm_head.weight"):
        engine.sync_weights(load_model(untied_dir))


def test_errors_name_the_problem(tokenizer, tiny_dir):
    with pytest.raises(ConfigError, match="expected one of hf, vllm"):
        make_engine("sglang", str(tiny_dir), tokenizer)
    engine = HFEngine(str(tiny_dir), tokenizer)
    with pytest.raises(ConfigError, match="prompt 1 is a int"):
        engine.generate(["ok", 3], SamplingConfig(n=1))
    with pytest.raises(ConfigError, match="non-empty list"):
        engine.generate([], SamplingConfig(n=1))
    assert not math.isnan(engine.generate(["ok"], SamplingConfig(n=1, max_tokens=2))
                          .sampler_logprobs[0][0])
