"""The on-policy shortcut: no separate pi_old forward when the update is one step on the sampling policy.

With ppo_epochs 1 and one minibatch, old_logprobs = logprobs.detach() of the update's own forward
is pi_old exactly, so a full train step must give the same loss, parameters and pi_old metrics as
the step that recomputes old log-probs with a no-grad forward, with one policy forward fewer.
"""
from types import SimpleNamespace

import pytest
import torch

from posttrain.rl.loop import experience
from posttrain.rl.loop.experience import update_is_on_policy
from posttrain.rl.loop.trainer import open_session, train_step
from posttrain.stages.grpo import GRPOConfig
from posttrain.stages.ppo import PPOConfig

BATCH = 16  # prompts_per_step 4 x group_size 4, one process


def grpo(**keys) -> GRPOConfig:
    return GRPOConfig.model_validate({"kind": "grpo", "data": "x.jsonl", "rewards": [{"function": "m:f"}],
                                      "prompts_per_step": 4, "group_size": 4, **keys})


def test_condition_holds_only_for_a_single_on_policy_step():
    for variant in ("grpo", "dr_grpo", "dapo", "gspo", "raft"):
        assert update_is_on_policy(grpo(variant=variant), BATCH), variant
    assert update_is_on_policy(grpo(minibatch_size=16, grad_accum=4), BATCH)  # accumulation inside is fine
    assert update_is_on_policy(grpo(variant="rloo", kl_coef=0.0), BATCH)  # no KL left in the reward
    assert not update_is_on_policy(grpo(ppo_epochs=2), BATCH)
    assert not update_is_on_policy(grpo(minibatch_size=8), BATCH)
    assert not update_is_on_policy(grpo(kl_placement="reward", kl_coef=0.05), BATCH)
    assert not update_is_on_policy(grpo(variant="rloo"), BATCH)  # its preset puts the KL in the reward
    assert not update_is_on_policy(grpo(mismatch_correction="tis"), BATCH)
    assert not update_is_on_policy(grpo(mismatch_correction="mis"), BATCH)
    assert not update_is_on_policy(grpo(kl_target=0.1), BATCH)  # adaptive KL reads the experience KL
    assert not update_is_on_policy(grpo(variant="reinforce_pp", kl_coef=0.0), BATCH)  # token rewards read pi_old
    ppo = PPOConfig.model_validate({"kind": "ppo", "data": "x.jsonl", "rewards": [{"function": "m:f"}],
                                    "ppo_epochs": 1, "kl_coef": 0.0})
    assert not update_is_on_policy(ppo, ppo.prompts_per_step * ppo.group_size)  # critic values from pi_old's forward


def one_step(config, on_policy: bool, monkeypatch):
    """One train_step from a fresh session -> (metrics, parameter deltas, policy forwards outside generation)."""
    with monkeypatch.context() as patch:
        if not on_policy:
            patch.setattr(experience, "update_is_on_policy", lambda config, batch_size: False)
        session = open_session(config, SimpleNamespace(world_size=1))
        try:
            if session.ref_model is not None:  # a reference != the policy, so the logged KL is not 0
                with torch.no_grad():
                    for param in session.ref_model.parameters():
                        param.mul_(1.05)
            assert experience.update_is_on_policy(config, BATCH) is on_policy
            forwards = []  # ActorCritic forwards: pi_old log-probs and the update (generation calls the policy)
            session.unwrapped.register_forward_pre_hook(lambda module, args: forwards.append(1))
            policy = session.unwrapped.policy
            before = {k: v.detach().clone() for k, v in policy.named_parameters()}
            metrics = train_step(session, 1)
            delta = {k: v.detach() - before[k] for k, v in policy.named_parameters()}
        finally:
            session.engine.close()
            session.scorer.close()
    return metrics, delta, len(forwards)


@pytest.mark.parametrize(("variant", "grad_accum"), [("grpo", 1), ("dr_grpo", 1), ("gspo", 1), ("grpo", 2)])
def test_shortcut_step_equals_recomputed_old_logprobs(tiny_model_dir, prompts_file, rewards_file, variant,
                                                      grad_accum, monkeypatch):
    """Same loss, same AdamW parameter update, same pi_old metrics; one forward per micro-batch fewer."""
    config = GRPOConfig.model_validate({
        "kind": "grpo", "variant": variant, "model": str(tiny_model_dir), "data": str(prompts_file),
        "rewards": [{"function": f"{rewards_file}:vowel_fraction"}], "prompts_per_step": 4, "group_size": 4,
        "max_tokens": 6, "lr": 1e-3, "grad_accum": grad_accum})
    fast, fast_delta, fast_forwards = one_step(config, True, monkeypatch)
    slow, slow_delta, slow_forwards = one_step(config, False, monkeypatch)
    assert (fast_forwards, slow_forwards) == (grad_accum, 2 * grad_accum)
    assert max(float(v.abs().max()) for v in slow_delta.values()) > 1e-4  # the step did something
    for name in slow_delta:
        assert torch.allclose(fast_delta[name], slow_delta[name], rtol=1e-5, atol=1e-8), name
    assert set(fast) == set(slow)  # every metric is still logged
    assert "mismatch/logprob_abs_diff_mean" in fast and ("kl" in fast) == (variant == "grpo")
    assert variant != "grpo" or fast["kl"] > 1e-4  # k3 >= 0; pi_old's KL, now from the update's forward
    assert fast["reward"] == slow["reward"]  # the same completions were trained on
    for key in ["loss", "loss/policy", "grad_norm", "entropy", "kl", "kl/sequence"] + [
            k for k in slow if k.startswith("mismatch/")]:
        if key in slow:
            assert fast[key] == pytest.approx(slow[key], rel=1e-5, abs=1e-7), key
    assert fast["clip_frac_low"] == fast["clip_frac_high"] == 0.0  # ratio is exactly 1
    if variant != "grpo":  # no reference model: nothing left to compute before the update
        assert fast["time/logprobs"] < 0.02, (fast["time/logprobs"], slow["time/logprobs"])
