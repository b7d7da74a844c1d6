"""How the loop routes rewards into the algos estimators (hand-computed, tight tolerances)."""
import pytest
import torch

from posttrain.rl.loop.advantages import AdvantageInputs, compute_advantages
from posttrain.stages.grpo import GRPOConfig
from posttrain.stages.ppo import PPOConfig

ATOL = 1e-4


def local(rewards):
    return rewards, slice(0, rewards.shape[0])


def grpo(**keys):
    return GRPOConfig.model_validate({"kind": "grpo", "data": "x.jsonl", "rewards": [{"function": "m:f"}],
                                      "group_size": 2, **keys})


def inputs(rewards, mask, old=None, ref=None, values=None, kl_coef=0.0):
    rewards, mask = torch.tensor(rewards), torch.tensor(mask)
    old = torch.tensor(old) if old is not None else torch.zeros_like(mask)
    return AdvantageInputs(rewards=rewards, response_mask=mask, old_logprobs=old,
                           ref_logprobs=torch.tensor(ref) if ref is not None else None,
                           values=torch.tensor(values) if values is not None else None, kl_coef=kl_coef)


def test_group_normalized_broadcasts_to_tokens():
    """groups [1, 0] and [0, 0]: mean 0.5, unbiased std 0.70711 -> A = +-0.5/(0.70711+1e-4) = +-0.70701;
    the all-equal group gets 0; padded tokens get 0."""
    adv, returns, stats = compute_advantages(
        grpo(variant="grpo", kl_coef=0.0), inputs([1.0, 0.0, 0.0, 0.0], [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]),
        local)
    expected = torch.tensor([[0.70701, 0.70701], [-0.70701, 0.0], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=ATOL, rtol=0)
    assert returns is None
    assert stats["advantages/max"] == pytest.approx(0.70701, abs=ATOL)
    # GRPO's health signal reaches the metrics: 1 of the 2 groups has std 0 (no learning signal)
    assert float(stats["advantages/frac_zero_std"]) == 0.5


def test_dr_grpo_does_not_divide_by_std():
    adv, _, _ = compute_advantages(grpo(variant="dr_grpo"), inputs([1.0, 0.0], [[1.0], [1.0]]), local)
    torch.testing.assert_close(adv, torch.tensor([[0.5], [-0.5]]), atol=1e-6, rtol=0)


def test_rloo_with_sequence_kl_in_reward():
    """k1 per token = old - ref: row 0 [1, 0] -> KL_seq 1, row 1 -> 0. beta 0.5:
    r' = [1 - 0.5, 0 - 0] = [0.5, 0]; leave-one-out: A = [0.5 - 0, 0 - 0.5]."""
    config = grpo(variant="rloo", kl_coef=0.5)
    adv, _, _ = compute_advantages(config, inputs([1.0, 0.0], [[1.0, 1.0], [1.0, 1.0]], old=[[-1.0, -1.0], [-1.0, 0.0]],
                                                  ref=[[-2.0, -1.0], [-1.0, 0.0]], kl_coef=0.5), local)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5], [-0.5, -0.5]]), atol=1e-6, rtol=0)


def test_reinforce_pp_baseline_then_token_whitening():
    """G = 2, rewards [1, 0] -> baseline [0.5, -0.5]; returns-to-go (gamma 1, no KL): row 0 [0.5, 0.5],
    row 1 [-0.5]; whitened over the 3 tokens: mean 1/6, population std 0.4714 -> [0.7071, 0.7071, -1.4142]."""
    config = grpo(variant="reinforce_pp", kl_coef=0.0)
    adv, _, _ = compute_advantages(config, inputs([1.0, 0.0], [[1.0, 1.0], [1.0, 0.0]]), local)
    torch.testing.assert_close(adv, torch.tensor([[0.7071, 0.7071], [-1.4142, 0.0]]), atol=ATOL, rtol=0)


def test_gae_with_kl_penalty():
    """One sequence of 2 tokens, score 1, V = [0.5, 0.25], k1 KL = [0.2, 0.4], beta 0.5, gamma 1, lam 1:
    r = [-0.1, -0.2 + 1] ; A_1 = 0.8 - 0.25 = 0.55 ; A_0 = -0.1 + 0.25 - 0.5 + 0.55 = 0.2 ;
    returns = A + V = [0.7, 0.8]."""
    config = PPOConfig.model_validate({"kind": "ppo", "data": "x.jsonl", "rewards": [{"reward_model": "m"}],
                                       "kl_coef": 0.5, "lam": 1.0, "whiten_advantages": False})
    adv, returns, _ = compute_advantages(
        config, inputs([1.0], [[1.0, 1.0]], old=[[-1.0, -1.0]], ref=[[-1.2, -1.4]], values=[[0.5, 0.25]], kl_coef=0.5),
        local)
    torch.testing.assert_close(adv, torch.tensor([[0.2, 0.55]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(returns, torch.tensor([[0.7, 0.8]]), atol=1e-6, rtol=0)


def test_batch_scale_uses_all_processes_rewards():
    """advantage_scale batch divides by the std of the gathered rewards, then keeps this process's rows."""
    everything = torch.tensor([1.0, 0.0, 3.0, 1.0])  # "process 0" has the first group, "process 1" the second

    def gather(rewards):
        return everything, slice(2, 4)

    adv, _, _ = compute_advantages(grpo(advantage_scale="batch", kl_coef=0.0), inputs([3.0, 1.0], [[1.0], [1.0]]), gather)
    std = everything.std()  # unbiased, as TRL
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, -1.0]) / (std + 1e-4), atol=1e-6, rtol=0)
