"""Chunked selected-token log-probs: the full computation's values and gradients, one chunk in memory."""
import pytest
import torch

from posttrain.rl.algos import entropy_from_logits
from posttrain.rl.loop.logits import chunk_tokens, selected_logprobs
from posttrain.rl.loop.models import ActorCritic, load_policy
from posttrain.rl.loop.packing import padded_layout
from posttrain.rl.loop.tokens import forward_responses


def _full(hidden, head, targets, temperature):
    logits = head(hidden).float() / temperature
    logprobs = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    return logprobs, entropy_from_logits(logits[None])[0]


def _inputs(seed=0, n=10, h=6, v=13):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(h, v, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g))
        head.bias.copy_(torch.randn(v, generator=g))
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    return hidden, head, torch.randint(0, v, (n,), generator=g)


@pytest.mark.parametrize("chunk", [1, 3, 10, 64])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunks_give_the_full_values_and_gradients(chunk, entropy_grad):
    hidden, head, targets = _inputs()
    logprobs, entropy = selected_logprobs(hidden, head, targets, 0.7, chunk, with_entropy=True,
                                          entropy_grad=entropy_grad)
    full_lp, full_ent = _full(hidden, head, targets, 0.7)
    torch.testing.assert_close(logprobs, full_lp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(entropy, full_ent.detach(), atol=1e-6, rtol=1e-6)
    assert entropy.requires_grad == entropy_grad
    weights = torch.linspace(-1, 1, hidden.shape[0])
    loss = (weights * logprobs).sum() + ((0.3 * entropy).sum() if entropy_grad else 0)
    full_loss = (weights * full_lp).sum() + ((0.3 * full_ent).sum() if entropy_grad else 0)
    grads = torch.autograd.grad(loss, [hidden, head.weight, head.bias])
    full_grads = torch.autograd.grad(full_loss, [hidden, head.weight, head.bias])
    for got, want in zip(grads, full_grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_no_lm_head_call_sees_more_than_a_chunk_forward_or_backward():
    hidden, head, targets = _inputs(n=10)
    rows = []
    head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    logprobs, _ = selected_logprobs(hidden, head, targets, 1.0, chunk=4)
    logprobs.sum().backward()
    assert rows == [4, 4, 2, 2, 4, 4]  # 3 chunks forward, then recomputed one at a time in the backward (last first)
    assert hidden.grad is not None


def test_chunk_size_bounds_the_float32_logits():
    assert chunk_tokens(2**20, vocab=1024) == 256  # 256 x 1024 x 4 bytes = 1 MiB
    assert chunk_tokens(10, vocab=1024) == 1


@pytest.mark.parametrize("chunk_bytes", [64 * 4 * 1024, 2**30])  # 64 positions per chunk, or one chunk
def test_model_log_probs_from_hidden_states_equal_the_models_own_logits(tiny_model_dir, chunk_bytes):
    """ActorCritic's lm_head-on-selected-positions path == the model's full logits, gathered."""
    policy = load_policy(str(tiny_model_dir))
    ids = torch.randint(3, policy.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    mask[2, 30:] = 0  # a shorter response
    layout = padded_layout(ids, mask, (mask.cumsum(1) - 1).clamp(min=0), prompt_width=10)
    model = ActorCritic(policy, chunk_bytes=chunk_bytes)
    assert model.from_hidden
    ours = forward_responses(model, layout, 0.8, with_entropy=True)
    model.from_hidden = False
    theirs = forward_responses(model, layout, 0.8, with_entropy=True)
    for got, want in zip(ours[:2], theirs[:2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    generated = mask[:, 10:].bool()
    assert (ours[0][~generated] == 0).all() and (ours[0][generated] < 0).all()
