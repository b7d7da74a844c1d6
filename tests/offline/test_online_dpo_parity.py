"""Parity: online DPO's per-pair loss (posttrain.rl.algos.dpo_pair_loss, plus chosen_nll for the
RPO term) equals TRL 1.16 DPOTrainer's loss on TRL's own tensors, for every loss type the
online_dpo stage offers.

TRL computes one pair with a reference model different from the policy; its logged metrics give
the policy's summed log-probs (logps/chosen, logps/rejected) and the implicit rewards
beta * (log pi - log ref), hence the reference's sums; its completion mask gives the lengths."""
from __future__ import annotations

import pytest
import torch
from dpo_helpers import trl_loss_on_one_pair

from posttrain.rl.algos import chosen_nll, dpo_pair_loss

BETA = 0.5


@pytest.mark.parametrize("loss_type, eps, sft_weight", [("sigmoid", 0.0, 0.0), ("sigmoid", 0.2, 0.0), ("robust", 0.2, 0.0),
                                                        ("hinge", 0.0, 0.0), ("ipo", 0.0, 0.0), ("sigmoid", 0.0, 0.5)],
                         ids=["dpo", "cdpo", "robust", "hinge", "ipo", "rpo"])
def test_pair_loss_matches_trl_dpo_trainer(tmp_path, tiny_model, other_tiny_model, small_preference_data, loss_type, eps,
                                           sft_weight):
    from posttrain.stages.dpo import DPOConfig

    config = DPOConfig(model=str(tiny_model), ref_model=str(other_tiny_model), data=small_preference_data,
                       batch_size=1, beta=BETA, loss_type=loss_type, label_smoothing=eps, sft_weight=sft_weight)
    trl_loss, m, inputs = trl_loss_on_one_pair(config, tmp_path, 1)
    chosen, rejected = torch.tensor([m["logps/chosen"]]), torch.tensor([m["logps/rejected"]])
    ref_chosen = chosen - m["rewards/chosen"] / BETA
    ref_rejected = rejected - m["rewards/rejected"] / BETA
    lengths = inputs["completion_mask"].sum(dim=1).double()     # rows: [chosen, rejected]
    losses, stats = dpo_pair_loss(chosen.double(), rejected.double(), ref_chosen.double(), ref_rejected.double(),
                                  beta=BETA, loss_type=loss_type, label_smoothing=eps,
                                  chosen_lengths=lengths[:1], rejected_lengths=lengths[1:])
    loss = losses[0] + sft_weight * chosen_nll(chosen.double(), lengths[0])  # RPO: TRL's `sft` term
    assert abs(m["rewards/margins"]) > 0.05  # the reference really is another model
    assert float(loss) == pytest.approx(trl_loss, rel=1e-4, abs=1e-5)
    assert float(stats["reward_margin"]) == pytest.approx(m["rewards/margins"], rel=1e-5, abs=1e-6)
