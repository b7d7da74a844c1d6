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
