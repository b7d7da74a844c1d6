"""Helpers shared by the rollout tests (reference generation, teacher-forced log-probs, noise)."""
from __future__ import annotations

import torch

CHAT_PROMPTS = [
    [{"role": "user", "content": "What is 12 plus 7?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort: b, a."}],
]
RAW_PROMPTS = ["The quick brown fox", '{"prompt": "What is 3 minus 9?", "answer": "']
PROMPTS = CHAT_PROMPTS + RAW_PROMPTS


def liven(model: torch.nn.Module, seed: int) -> None:
    """Redraw every matrix at std 0.15 (seeded).

    A fresh init (std 0.02) with tied embeddings greedily repeats the prompt's last token, so
    parity on it would prove little; at std 0.15 the greedy continuations are varied.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:  # embeddings (= tied lm_head), projections; norms stay 1
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add seeded Gaussian noise to every parameter (tied embedding included), in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """HF generate on one unpadded prompt (the parity reference); ends with eos if it stopped."""
    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def teacher_forced_logprobs(model, prompt_ids: list[int], completion_ids: list[int],
                            temperature: float = 1.0) -> list[float]:
    """log softmax(logits / T) of each completion token given everything before it."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].double() / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(-1, torch.tensor(completion_ids).unsqueeze(-1)).squeeze(-1).tolist()


def check_batch_shapes_and_grouping(engine, exact_finish_reason: bool) -> None:
    """4 prompts x n=3, max 10 tokens: grouping, prompt ids, lengths, log-probs, finish reasons.

    ``exact_finish_reason``: "stop" iff the last token is an eos (hf); otherwise only "stop" or
    a full-length row (vLLM may also stop on its own eos set)."""
    from posttrain.rl.rollout import SamplingConfig, render_prompts

    batch = engine.generate(PROMPTS, SamplingConfig(n=3, max_tokens=10, seed=0))
    assert len(batch) == 12
    assert batch.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    expected_prompts = render_prompts(engine.tokenizer, PROMPTS)
    assert batch.prompt_ids == [expected_prompts[i] for i in batch.prompt_index]
    for ids, logprobs, reason in zip(batch.completion_ids, batch.sampler_logprobs, batch.finish_reasons):
        assert 1 <= len(ids) <= 10 and len(logprobs) == len(ids)
        assert all(lp <= 0.0 for lp in logprobs)
        if exact_finish_reason:
            assert reason == ("stop" if ids[-1] in engine.eos_token_ids else "length")
        else:
            assert reason == "stop" or len(ids) == 10
