"""iter_full_state_dict: HF names, tied weights once, LoRA merged into copies, ZeRO-3 gathered."""
from __future__ import annotations

import copy
import socket

import pytest
import torch

from posttrain.models import load_model
from posttrain.rl.rollout import iter_full_state_dict, unwrap_model, write_safetensors_shards
from posttrain.rl.rollout.vllm_worker import iter_safetensors


def test_plain_model_yields_each_distinct_parameter_once(tiny_model):
    got = list(iter_full_state_dict(tiny_model))
    names = [name for name, _ in got]
    assert names == [name for name, _ in tiny_model.named_parameters()]
    # Tied: the lm_head is the embedding, so it is not repeated (vLLM re-ties it itself).
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    state = tiny_model.state_dict()
    for name, tensor in got:
        assert torch.equal(tensor, state[name])
        assert not tensor.requires_grad


def test_untied_model_yields_lm_head(untied_dir):
    names = [name for name, _ in iter_full_state_dict(load_model(untied_dir))]
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names


def _lora(model, **config):
    from peft import LoraConfig, get_peft_model

    # init_lora_weights=False draws lora_B at random too, so the adapters are not a no-op.
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            **config))


def test_lora_is_merged_into_copies_under_base_names(tiny_model):
    base_names = [name for name, _ in tiny_model.named_parameters()]
    peft_model = _lora(tiny_model, target_modules=["q_proj", "v_proj", "down_proj"])
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    got = dict(iter_full_state_dict(peft_model))
    assert list(got) == base_names  # no base_model.model. prefix, no lora_A/B, no .base_layer

    expected = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)
    q_name = "model.layers.0.self_attn.q_proj.weight"
    base_q = frozen["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert (got[q_name] - base_q).abs().max() > 1e-3  # the adapter really changed it
    # The training weights are untouched (no in-place merge, so repeated syncs cannot drift).
    for name, param in peft_model.named_parameters():
        assert torch.equal(param, frozen[name]), name


def test_lora_merged_weights_generate_like_the_peft_model(tiny_model):
    """Loading the merged weights into a plain model reproduces the adapter model's logits."""
    plain = copy.deepcopy(tiny_model)
    peft_model = _lora(tiny_model, target_modules=["q_proj", "k_proj", "gate_proj"]).eval()
    plain.load_state_dict(dict(iter_full_state_dict(peft_model)), strict=False)
    ids = torch.tensor([[5, 17, 300, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, peft_model(ids).logits, rtol=0, atol=1e-5)


def test_lora_modules_to_save_yields_the_trained_copy(untied_dir):
    peft_model = _lora(load_model(untied_dir), target_modules=["q_proj"],
                       modules_to_save=["lm_head"])
    with torch.no_grad():
        peft_model.base_model.model.lm_head.modules_to_save["default"].weight.add_(1.0)
    got = dict(iter_full_state_dict(peft_model))
    original = peft_model.base_model.model.lm_head.original_module.weight
    torch.testing.assert_close(got["lm_head.weight"], original + 1.0)
    assert [n for n in got if "lm_head" in n] == ["lm_head.weight"]


def test_safetensors_shards_round_trip_in_order(tiny_model, tmp_path):
    pairs = list(iter_full_state_dict(tiny_model))
    paths = write_safetensors_shards(iter(pairs), tmp_path, max_shard_bytes=64 * 1024)
    assert len(paths) > 2  # several shards: the writer flushes as it goes
    back = list(iter_safetensors(paths))
    assert [n for n, _ in back] == [n for n, _ in pairs]
    for (_, expected), (_, tensor) in zip(pairs, back):
        assert torch.equal(tensor, expected)


@pytest.fixture
def zero3_engine(tiny_model, monkeypatch):
    """A one-process DeepSpeed ZeRO-3 engine over gloo; the process group is destroyed after."""
    import deepspeed  # a hard dependency: a missing one must fail, not skip
    with socket.socket() as probe:  # a free port: other jobs on this machine use 29500-ish
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
              "zero_allow_untested_optimizer": True}
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    engine, *_ = deepspeed.initialize(model=tiny_model, optimizer=optimizer, config=config)
    yield engine
    deepspeed.comm.destroy_process_group()
    deepspeed.comm.comm.cdb = None


def test_zero3_gather_equals_original_weights(tiny_dir, zero3_engine):
    original = load_model(tiny_dir)
    module = unwrap_model(zero3_engine)
    assert module is zero3_engine.module
    # Partitioned: every local parameter is an empty placeholder until gathered.
    assert all(p.numel() == 0 and hasattr(p, "ds_id") for p in module.parameters())
    got = list(iter_full_state_dict(zero3_engine))
    assert [n for n, _ in got] == [n for n, _ in original.named_parameters()]
    state = original.state_dict()
    for name, tensor in got:
        assert torch.equal(tensor, state[name]), name
    # Gathering is temporary: the parameters are partitioned again afterwards.
    assert all(p.numel() == 0 for p in module.parameters())
