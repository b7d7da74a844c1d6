"""The update phase: gradient accumulation and minibatching do not change the math."""
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from posttrain.rl.algos import FixedKLController
from posttrain.rl.loop.batches import ExperienceBatch
from posttrain.rl.loop.dist import Processes
from posttrain.rl.loop.models import ActorCritic, load_policy
from posttrain.rl.loop.packing import split_batch
from posttrain.rl.loop.tokens import collate, forward_in_chunks
from posttrain.rl.loop.update import minibatch_step
from posttrain.rl.rollout.types import RolloutBatch
from posttrain.stages.grpo import GRPOConfig


def make_config(**overrides):
    base = {"kind": "grpo", "data": "x.jsonl", "rewards": [{"function": "m:f"}], "group_size": 2,
            "prompts_per_step": 4, "max_tokens": 4, "max_grad_norm": 1e9, "kl_coef": 0.1, "entropy_coef": 0.01}
    return GRPOConfig.model_validate({**base, **overrides})


def experience(model, seed=0) -> ExperienceBatch:
    """8 completions of varied lengths with random advantages and perturbed old/ref log-probs."""
    g = torch.Generator().manual_seed(seed)
    prompts = [[5 + i, 6, 7][: 1 + i % 3] for i in range(8)]
    completions = [[20 + j for j in range(1 + i % 4)] for i in range(8)]
    batch = RolloutBatch(prompt_ids=prompts, completion_ids=completions,
                         sampler_logprobs=[[-1.0] * len(c) for c in completions], finish_reasons=["stop"] * 8,
                         completions=[""] * 8, prompt_index=[i // 2 for i in range(8)])
    tensors = collate(batch, pad_token_id=0)
    logprobs, _, _ = forward_in_chunks(ActorCritic(model), tensors, padded_splits(tensors, 8), temperature=1.0)
    mask = tensors.response_mask
    noise = lambda: 0.3 * torch.randn(logprobs.shape, generator=g) * mask
    return ExperienceBatch(input_ids=tensors.input_ids, attention_mask=tensors.attention_mask,
                           position_ids=tensors.position_ids, response_mask=mask, old_logprobs=logprobs + noise(),
                           sampler_logprobs=tensors.sampler_logprobs,
                           advantages=torch.randn(8, generator=g)[:, None] * mask, prompt_width=tensors.prompt_width,
                           ref_logprobs=logprobs + noise())


def one_step(model_dir, config, exp, procs=None):
    policy = load_policy(str(model_dir))
    model = ActorCritic(policy)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    acc = Accelerator(gradient_accumulation_steps=config.grad_accum)
    prepared, optimizer = acc.prepare(model, optimizer)
    session = SimpleNamespace(config=config, accelerator=acc, procs=procs or Processes(), model=prepared, unwrapped=model, optimizer=optimizer,
                              scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                              kl_controller=FixedKLController(config.kl_coef))
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    stats = minibatch_step(session, exp)
    delta = {k: before[k] - v.detach() for k, v in policy.named_parameters()}
    return delta, stats


@pytest.mark.parametrize("grad_accum", [4, 8])
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_grad_accumulation_equals_one_pass(tiny_model_dir, aggregation, grad_accum):
    """8 rows in 1 micro-batch, in 4 micro-batches of 2 and in 8 of 1 give the same SGD update (global counts)."""
    exp = experience(load_policy(str(tiny_model_dir)))
    full, stats_full = one_step(tiny_model_dir, make_config(loss_aggregation=aggregation, grad_accum=1), exp)
    split, stats_split = one_step(tiny_model_dir, make_config(loss_aggregation=aggregation, grad_accum=grad_accum), exp)
    assert max(float(v.abs().max()) for v in full.values()) > 1e-4  # the step did something
    for name in full:
        torch.testing.assert_close(split[name], full[name], atol=2e-6, rtol=1e-4, msg=name)
    assert stats_split["loss"] == pytest.approx(stats_full["loss"], abs=1e-5)
    # the logged entropy is a per-token mean, whatever the micro-batching (it was 1/grad_accum of it)
    assert stats_split["entropy"] == pytest.approx(stats_full["entropy"], rel=1e-4)
    assert stats_full["grad_norm"] == pytest.approx(stats_split["grad_norm"], rel=1e-4)


def test_loss_weights_scale_the_policy_term(tiny_model_dir):
    """Mismatch weights of 0 on every token leave only KL and entropy terms; weights 1 change nothing."""
    exp = experience(load_policy(str(tiny_model_dir)))
    config = make_config(kl_coef=0.0, entropy_coef=0.0)
    plain, _ = one_step(tiny_model_dir, config, exp)
    exp.loss_weights = exp.response_mask.clone()
    ones, _ = one_step(tiny_model_dir, config, exp)
    exp.loss_weights = torch.zeros_like(exp.response_mask)
    zeros, stats = one_step(tiny_model_dir, config, exp)
    for name in plain:
        torch.testing.assert_close(ones[name], plain[name])
        assert float(zeros[name].abs().max()) == 0.0
    assert stats["loss"] == 0.0


def test_kl_weights_scale_the_kl_term_per_token(tiny_model_dir):
    """kl_weights (kl_turn_weights' factors) multiply the KL term only: 2 on every token is kl_coef
    doubled, and 0 leaves the policy term's update alone."""
    exp = experience(load_policy(str(tiny_model_dir)))
    doubled, _ = one_step(tiny_model_dir, make_config(kl_coef=0.2, entropy_coef=0.0), exp)
    no_kl, _ = one_step(tiny_model_dir, make_config(kl_coef=0.0, entropy_coef=0.0), exp)
    config = make_config(kl_coef=0.1, entropy_coef=0.0)
    exp.kl_weights = 2 * exp.response_mask
    twice, _ = one_step(tiny_model_dir, config, exp)
    exp.kl_weights = torch.zeros_like(exp.response_mask)
    zeroed, _ = one_step(tiny_model_dir, config, exp)
    for name in doubled:
        torch.testing.assert_close(twice[name], doubled[name], atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(zeroed[name], no_kl[name], atol=1e-7, rtol=1e-5)
    assert any(not torch.allclose(doubled[n], no_kl[n]) for n in doubled)  # the KL term moved the step


class _TwinProcesses(Processes):
    """Two processes holding identical minibatches, simulated in one (size=2): sums double."""

    def sum(self, value):
        return 2 * torch.as_tensor(value, dtype=torch.float32)


def test_logged_loss_is_the_global_loss_with_several_processes(tiny_model_dir):
    """Each process computes its share of the globally normalised loss; after the metrics are averaged
    over processes the logged loss must be the global one (here equal to the one-process loss)."""
    exp = experience(load_policy(str(tiny_model_dir)))
    config = make_config(kl_coef=0.0, entropy_coef=0.0)
    _, single = one_step(tiny_model_dir, config, exp)
    policy = load_policy(str(tiny_model_dir))
    model = ActorCritic(policy)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    acc = Accelerator()
    prepared, optimizer = acc.prepare(model, optimizer)
    session = SimpleNamespace(config=config, accelerator=acc, procs=_TwinProcesses(size=2), model=prepared, unwrapped=model,
                              optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                              kl_controller=FixedKLController(config.kl_coef))
    twin = minibatch_step(session, exp)
    assert abs(single["loss"]) > 1e-6
    assert twin["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert twin["loss/policy"] == pytest.approx(single["loss/policy"], rel=1e-5)
    assert twin["entropy"] == pytest.approx(single["entropy"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("aggregation, zero", [("token-mean", 0), ("seq-mean-token-mean", 0), ("token-mean", 2)])
def test_two_real_processes_of_4_rows_equal_one_process_of_8(tiny_model_dir, tmp_path, aggregation, zero):
    """The real update under torchrun: 2 gloo processes (DDP, or DeepSpeed ZeRO-2) with 4 rows each take
    the same SGD step as one process with all 8, and log the same global loss (global token/sequence
    counts, the gradient average over processes)."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("two_process_update.py")
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as sock:  # a free port: torchrun's --master_port 0 hung the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), str(script),
                           str(tiny_model_dir), str(tmp_path), aggregation, str(zero)],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt")
    exp = experience(load_policy(str(tiny_model_dir)))
    one, stats_one = one_step(tiny_model_dir, make_config(loss_aggregation=aggregation, grad_accum=1), exp)
    assert max(float(v.abs().max()) for v in one.values()) > 1e-4
    for name in one:
        torch.testing.assert_close(two["delta"][name], one[name], atol=2e-6, rtol=1e-4, msg=name)
    assert two["stats"]["loss"] == pytest.approx(stats_one["loss"], abs=1e-5)


def padded_splits(tensors, rows):
    return split_batch(tensors.attention_mask, tensors.prompt_width, rows_per_micro=rows, max_tokens=None)
