"""The policy trains in training mode with dropout off; activation checkpointing changes memory, not gradients."""
from __future__ import annotations

import torch
from transformers import AutoConfig

from posttrain.rl.loop.models import ActorCritic, disable_dropout, load_policy
from posttrain.rl.loop.tokens import padded_forward
from posttrain.rl.loop.trainer import prepare_for_training


def _grads(model_dir, checkpointing: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = ActorCritic(load_policy(str(model_dir)))
    prepare_for_training(model, checkpointing)
    ids = torch.randint(3, model.config.vocab_size, (4, 12))
    mask = torch.ones_like(ids)
    logprobs, _, _ = padded_forward(model, ids, mask, mask.cumsum(1) - 1, prompt_width=6, temperature=1.0)
    (-logprobs.mean()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_checkpointing_gives_the_same_gradients(tiny_model_dir):
    plain, checkpointed = _grads(tiny_model_dir, False), _grads(tiny_model_dir, True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_is_switched_on_in_training_mode(tiny_model_dir):
    model = ActorCritic(load_policy(str(tiny_model_dir)))
    prepare_for_training(model, True)
    assert model.training and model.policy.is_gradient_checkpointing


def test_training_mode_is_deterministic_with_attention_dropout_in_the_config(tiny_model_dir, tmp_path):
    """A checkpoint whose config asks for attention dropout still gives the same log-probs twice."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.attention_dropout = 0.5
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_model_dir, config=config).save_pretrained(tmp_path)
    model = ActorCritic(disable_dropout(AutoModelForCausalLM.from_pretrained(tmp_path)))
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (2, 10))
    mask = torch.ones_like(ids)
    first, _, _ = padded_forward(model, ids, mask, mask.cumsum(1) - 1, prompt_width=5, temperature=1.0)
    second, _, _ = padded_forward(model, ids, mask, mask.cumsum(1) - 1, prompt_width=5, temperature=1.0)
    assert torch.equal(first, second)
