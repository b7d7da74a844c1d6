"""Engine options derived for the machine and the recipe (no engine is started here)."""
import pytest
from transformers import AutoTokenizer

from posttrain.errors import ConfigError
from posttrain.rl.loop.trainer import context_length, engine_options
from posttrain.rl.rollout.types import render_prompts
from posttrain.rl.rollout.vllm_engine import device_env, vllm_lora_rank
from posttrain.stages.grpo import GRPOConfig


def test_each_training_process_gets_its_own_gpu_for_its_engine():
    assert device_env(True, {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert device_env(True, {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert device_env(True, {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "6, 7"}) == \
        {"CUDA_VISIBLE_DEVICES": "7"}
    assert device_env(True, {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}) == {}  # one process: as it is
    assert device_env(False, {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == {}  # CPU: nothing to choose
    with pytest.raises(ConfigError, match="process 2 of 3 .* no GPU of its own"):
        device_env(True, {"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "3", "CUDA_VISIBLE_DEVICES": "0,1"})


def test_vllm_lora_rank_is_the_smallest_that_vllm_serves():
    assert [vllm_lora_rank(r) for r in (1, 4, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(ConfigError, match="lora.r 1024"):
        vllm_lora_rank(1024)


def test_the_kv_cache_holds_the_longest_prompt_plus_max_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "one"}, {"prompt": [{"role": "user", "content": "a much longer question " * 5}]}]
    longest = max(len(ids) for ids in render_prompts(tokenizer, [r["prompt"] for r in rows]))
    length = context_length(tokenizer, rows, max_tokens=48)
    assert length % 64 == 0 and longest + 48 <= length < longest + 48 + 64
    config = GRPOConfig.model_validate({"kind": "grpo", "data": "x", "rewards": [{"function": "a:b"}], "engine": "vllm",
                                        "lora": {"r": 4}})
    options = engine_options(config, policy=None, device="cpu", context=length)
    assert options == {"lora_rank": 4, "max_model_len": length}
    mine = config.model_copy(update={"engine_options": {"max_model_len": 4096}, "lora_sync": "merged"})
    assert engine_options(mine, policy=None, device="cpu", context=length) == {"max_model_len": 4096}  # the recipe's own
