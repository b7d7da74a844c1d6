"""scripts/rl_landscape_probe.py: the exact objective, its gradient and the GRPO estimate agree."""
from __future__ import annotations

import json

import pytest
import torch
from repo_scripts import load_script


@pytest.fixture(scope="module")
def probe_module():
    return load_script("scripts/rl_landscape_probe.py")


def test_answer_logprobs_match_a_plain_teacher_forced_pass(probe_module, tiny_model_dir):
    from transformers import AutoTokenizer

    from posttrain.rl.loop.models import ActorCritic, load_policy

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = ActorCritic(load_policy(str(tiny_model_dir))).eval()
    rows = [{"prompt": [{"role": "user", "content": "What is 2 plus 25?"}], "answer": "27"},
            {"prompt": [{"role": "user", "content": "What is 40 plus 2 plus 29?"}], "answer": "71"}]
    got = probe_module.answer_logprobs(model, tok, rows)
    for row, value in zip(rows, got):
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        ids = tok(prompt + row["answer"] + tok.eos_token, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model.policy(ids).logits[0, :-1].float(), -1)
        expected = logp[torch.arange(n_prompt - 1, ids.shape[1] - 1), ids[0, n_prompt:]].sum()
        assert value.item() == pytest.approx(expected.item(), abs=1e-4)


def test_probe_first_order_step_matches_the_gradient(probe_module, tiny_model_dir, tmp_path):
    result = probe_module.probe(str(tiny_model_dir), prompts=4, samples=[4], norms=[1e-4], lrs=[1e-5],
                                max_tokens=4, seed=0)
    json.dumps(result)  # what --json writes
    assert result["cosine_with_exact"]["exact J"] == pytest.approx(1.0, abs=1e-5)
    # the untrained model earns no reward: every group ties, GRPO's advantages and gradient are 0
    assert result["sampled_reward"][4] == 0.0 and result["gradient_norm"]["GRPO G=4"] == 0.0
    assert result["cosine_with_exact"]["GRPO G=4"] == 0.0
    # a tiny ascent step along the exact gradient raises J by |grad| x step (first order)
    before = result["J"]["train"]
    after = result["gradient_step"]["exact J"][1e-4]["train"]
    predicted = 1e-4 * result["gradient_norm"]["exact J"]
    assert after > before
    assert (after - before) == pytest.approx(predicted, rel=0.05)
