"""LoRA in the RL stages: only adapters train, the reference is the base with adapters off, the
output is the merged model or the adapter, and a vllm engine is sent the adapter alone."""
import json

import pytest
import torch
from rl_loop_helpers import read_metrics, rl_recipe
from safetensors.torch import load_file

import posttrain
from posttrain.rl.loop import trainer


def _recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path, **stage):
    stage = {"variant": "grpo", "lora": {"r": 4, "alpha": 8}, "lr": 5e-2, "kl_coef": 0.05, **stage}
    return rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}], tmp_path / "run",
                     **stage)


def test_lora_grpo_trains_adapters_against_the_base_without_a_reference_copy(
        tiny_model_dir, prompts_file, rewards_file, tmp_path, monkeypatch):
    def no_copy(*args, **kwargs):
        raise AssertionError("a LoRA run must not load a second model as its reference")

    monkeypatch.setattr(trainer, "load_reference", no_copy)
    recipe = _recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path, engine="hf",
                     lora={"r": 4, "alpha": 8, "merge": False})
    result = posttrain.run(recipe, show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert records[-1]["kl"] > 0  # the adapters moved the policy away from its base, the reference
    out = result.stage("rl").output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert any(float(t.abs().max()) > 0 for name, t in adapter.items() if "lora_B" in name)  # B starts at 0

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = AutoModelForCausalLM.from_pretrained(out)  # transformers loads an adapter over its base
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base_logits, tuned_logits = base(ids).logits, tuned(ids).logits
        peft_logits = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)(ids).logits
    assert not torch.allclose(base_logits, tuned_logits)
    torch.testing.assert_close(tuned_logits, peft_logits)


def test_lora_merged_output_is_a_plain_model(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    result = posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path, engine="hf"),
                           show_progress=False)
    out = result.stage("rl").output
    assert not (out / "adapter_config.json").exists()
    merged, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert set(merged) == set(base)  # the base's own names: no lora_ tensors left
    changed = [name for name in base if not torch.equal(merged[name], base[name])]
    assert changed and all(name.endswith("proj.weight") for name in changed)  # only adapted linear layers moved


@pytest.mark.slow
@pytest.mark.parametrize("lora_sync", ["adapter", "merged"])
def test_lora_grpo_with_vllm_syncs_and_probes(tiny_model_dir, prompts_file, rewards_file, tmp_path, lora_sync):
    recipe = _recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path, engine="vllm", total_steps=3,
                     lora_sync=lora_sync)
    posttrain.run(recipe, show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        step = record["step"]
        if lora_sync == "adapter":
            assert record["sync/adapter_version"] == step  # one new adapter version per update
            # sampled with the adapter of the previous step's sync (none before the first update)
            assert record.get("rollout/adapter_version", 0) == step - 1
        else:  # the merged weights are reloaded in place: no adapter on the engine
            assert "sync/adapter_version" not in record and "rollout/adapter_version" not in record
        # vLLM serving the adapter computes the trainer's log-probs (both float32 on CPU)
        assert record["sync/probe_gap"] < 1e-4, record["sync/probe_gap"]
        assert abs(record["mismatch/kl_sampler_trainer"]) < 1e-4
