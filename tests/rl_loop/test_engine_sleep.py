"""engine_sleep: the engine sleeps from the end of generation to the weight sync, every step."""
import pytest
from rl_loop_helpers import rl_recipe
from transformers import AutoTokenizer

import posttrain
from posttrain.errors import ConfigError
from posttrain.rl.rollout import HFEngine


def test_the_loop_sleeps_the_engine_during_the_update_and_wakes_it_to_sync(
        tiny_model_dir, prompts_file, rewards_file, tmp_path, monkeypatch):
    calls = []
    for name in ("generate", "sleep", "wake", "sync_weights"):
        real = getattr(HFEngine, name)
        monkeypatch.setattr(HFEngine, name, lambda self, *a, _real=real, _name=name, **k: calls.append(_name) or _real(self, *a, **k))
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}], tmp_path / "run",
                       engine="hf", engine_sleep=True)
    posttrain.run(recipe, show_progress=False)
    assert calls == ["generate", "sleep", "wake", "sync_weights"] * 2


def test_vllm_sleep_mode_is_refused_where_vllm_has_none(tiny_model_dir, monkeypatch):
    from vllm.platforms import current_platform

    from posttrain.rl.rollout.vllm_engine import VLLMEngine

    monkeypatch.setattr(type(current_platform), "is_sleep_mode_available", lambda self: False)  # as on CPU

    with pytest.raises(ConfigError, match="engine_sleep: vLLM's sleep mode needs a CUDA"):
        VLLMEngine(str(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir), sleep=True)
