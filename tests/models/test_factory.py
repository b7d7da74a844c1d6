"""init_model: shapes, loading through the Auto classes, determinism, out_dir safety."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from posttrain.errors import ConfigError
from posttrain.models import (
    ARCHES,
    MODEL_SIZES,
    build_config,
    count_parameters,
    describe,
    init_model,
)


def _file_hashes(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}


def test_size_table():
    assert ARCHES == ("qwen2", "llama")
    assert set(MODEL_SIZES) == {"tiny", "small", "base"}
    assert [MODEL_SIZES[s].head_dim for s in ("tiny", "small", "base")] == [32, 32, 64]
    for preset in MODEL_SIZES.values():
        assert preset.head_dim >= 32  # vLLM's CPU attention has no kernel below 32
        assert preset.num_attention_heads % preset.num_key_value_heads == 0


@pytest.mark.parametrize(("arch", "expected"), [("qwen2", 139_840), ("llama", 139_584)])
def test_tiny_parameter_count_by_hand(arch, expected, tiny_qwen2, tiny_llama):
    """Tiny = hidden 64, 2 layers, 2 heads x 32, 1 KV head, MLP 128, vocab 1024, tied embeddings.

    embedding 1024*64 = 65536; per layer: q 64*64 = 4096, k and v 64*32 = 2048 each,
    o 64*64 = 4096, MLP 3*64*128 = 24576, two RMSNorms 2*64 = 128 -> 36992 (Llama);
    Qwen2 adds q/k/v biases 64+32+32 = 128 -> 37120. Final norm 64. lm_head is tied (0).
    Qwen2: 65536 + 2*37120 + 64 = 139840; Llama: 65536 + 2*36992 + 64 = 139584.
    """
    path = {"qwen2": tiny_qwen2, "llama": tiny_llama}[arch]
    model = AutoModelForCausalLM.from_pretrained(path)
    assert count_parameters(model) == expected
    assert count_parameters(path) == expected  # from the safetensors headers alone


def test_loads_as_causal_lm_and_generates(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.config.max_position_embeddings == 1024
    assert model.generation_config.eos_token_id == [2, 0]
    assert model.generation_config.pad_token_id == 0
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                     add_generation_prompt=True, return_dict=True,
                                     return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_len], inputs["input_ids"])
    assert 1 <= out.shape[1] - prompt_len <= 5


def test_loads_as_sequence_classifier_with_padding(tiny_model):
    """num_labels=1 reward head; pad_token_id in the config picks each row's last real token."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.eval()
    texts = ["What is 12 plus 7? 19", "hi"]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # row 1 padded
    with torch.no_grad():
        batched = model(**batch).logits
        alone = model(**tok(texts[1:], return_tensors="pt")).logits
    assert batched.shape == (2, 1)
    torch.testing.assert_close(batched[1], alone[0], rtol=1e-5, atol=1e-6)


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = init_model(tmp_path / "a", arch="qwen2", size="tiny", seed=3)
    second = init_model(tmp_path / "b", arch="qwen2", size="tiny", seed=3)
    hashes = _file_hashes(first)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "posttrain_model.json"} <= set(hashes)
    assert hashes == _file_hashes(second)


def test_different_seed_changes_only_the_weights(tmp_path):
    a = _file_hashes(init_model(tmp_path / "a", seed=0))
    b = _file_hashes(init_model(tmp_path / "b", seed=1))
    changed = {name for name in a if a[name] != b[name]}
    assert changed == {"model.safetensors", "posttrain_model.json"}


def test_callers_global_state_is_left_alone(tmp_path):
    """The global torch RNG and transformers' progress-bar switch (either way) are restored after init."""
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    was_enabled = hf_logging.is_progress_bar_enabled()  # other tests' stages may have switched it off
    try:
        for i, enabled in enumerate((True, False)):
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            if i == 0:
                init_model(tmp_path / "m", seed=7)
                torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
            else:
                init_model(tmp_path / "m2", seed=7)
            assert hf_logging.is_progress_bar_enabled() == enabled
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


def test_refuses_non_empty_out_dir(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=str(out)):
        init_model(out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no staging dir left behind


def test_overwrite_replaces_the_directory(tmp_path):
    out = init_model(tmp_path / "m", seed=0)
    (out / "stale.bin").write_bytes(b"old")
    init_model(out, seed=1, overwrite=True)
    assert not (out / "stale.bin").exists()
    assert describe(out)["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_empty_existing_dir_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    assert init_model(tmp_path / "empty").joinpath("config.json").is_file()


def test_out_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        init_model(target, overwrite=True)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"arch": "gpt2"}, "arch='gpt2' is not supported; expected one of qwen2, llama"),
    ({"size": "huge"}, "size='huge' is not supported; expected one of tiny, small, base"),
])
def test_unknown_arch_or_size(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        init_model(tmp_path / "m", **kwargs)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_configs_for_every_preset(arch, size):
    """Built without weights: the config carries the preset's shape and the special ids."""
    config = build_config(arch, size, vocab_size=1024, pad_token_id=0, eos_token_id=2,
                          bos_token_id=0)
    preset = MODEL_SIZES[size]
    assert config.model_type == arch
    assert config.hidden_size // config.num_attention_heads == preset.head_dim
    assert (config.num_hidden_layers, config.num_key_value_heads, config.intermediate_size) == (
        preset.num_hidden_layers, preset.num_key_value_heads, preset.intermediate_size)
    assert config.tie_word_embeddings
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (0, 2, 0)


def test_describe(tiny_qwen2, tmp_path):
    info = describe(tiny_qwen2)
    assert info == {
        "path": str(tiny_qwen2), "arch": "qwen2", "size": "tiny", "seed": 0, "params": 139_840,
        "vocab_size": 1024, "hidden_size": 64, "num_hidden_layers": 2,
        "tie_word_embeddings": True,
    }
    # Without posttrain's metadata the preset is recognised from the config shape.
    plain = tmp_path / "plain"
    AutoModelForCausalLM.from_pretrained(tiny_qwen2).save_pretrained(plain)
    assert describe(plain)["size"] == "tiny"
    assert describe(plain)["seed"] is None
    with pytest.raises(ConfigError, match="config.json"):
        describe(tmp_path / "nothing")


def test_metadata_file(tiny_llama):
    meta = json.loads((tiny_llama / "posttrain_model.json").read_text())
    assert meta["arch"] == "llama" and meta["size"] == "tiny" and meta["params"] == 139_584


@pytest.mark.slow
def test_files_identical_across_processes(tmp_path):
    """Tokenizer training and weight init do not depend on hash seeds or process state."""
    in_process = _file_hashes(init_model(tmp_path / "here", arch="llama", size="tiny", seed=5))
    for hash_seed in ("1", "2"):
        out = tmp_path / f"proc{hash_seed}"
        code = ("from posttrain.models import init_model; "
                f"init_model({str(out)!r}, arch='llama', size='tiny', seed=5)")
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
        assert _file_hashes(out) == in_process
