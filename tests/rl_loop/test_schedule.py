"""The RL loop's lr_scheduler: the offline stages' names, hand-computed curves, the config key."""
import math

import pytest
import torch

from posttrain.common.schedule import lr_multiplier
from posttrain.rl.loop.trainer import make_scheduler
from posttrain.stages.grpo import GRPOConfig
from posttrain.stages.sft import SFTConfig


@pytest.mark.parametrize("schedule, warmup, total, expected", [
    # warm-up (s+1)/(w+1), then transformers' curves: linear (T-s)/(T-w), cosine 0.5(1+cos(pi (s-w)/(T-w)))
    ("linear", 2, 6, [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", 2, 6, [1 / 3, 2 / 3, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
    ("constant_with_warmup", 2, 6, [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]),
    ("constant", 2, 6, [1.0] * 6),
    ("linear", 0, 4, [1.0, 0.75, 0.5, 0.25]),
])
def test_curves_by_hand(schedule, warmup, total, expected):
    assert [lr_multiplier(schedule, s, warmup, total) for s in range(total)] == pytest.approx(expected, abs=1e-12)


def test_scheduler_steps_the_optimizer_lr_along_the_curve():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(optimizer, "cosine", warmup_steps=1, total_steps=5)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.1 * lr_multiplier("cosine", s, 1, 5) for s in range(5)]
    assert seen == pytest.approx(expected, abs=1e-12) and seen[-1] < seen[1]


def test_one_key_with_each_kinds_default():
    rl = {"kind": "grpo", "data": "x", "rewards": [{"function": "a:b"}]}
    assert GRPOConfig.model_validate(rl).lr_scheduler == "constant_with_warmup"  # the loop's schedule until now
    assert GRPOConfig.model_validate({**rl, "lr_scheduler": "cosine"}).lr_scheduler == "cosine"
    assert SFTConfig.model_validate({"kind": "sft", "data": "x"}).lr_scheduler == "linear"
    assert GRPOConfig.model_fields["lr_scheduler"].description == SFTConfig.model_fields["lr_scheduler"].description
    with pytest.raises(ValueError, match="lr_scheduler"):
        GRPOConfig.model_validate({**rl, "lr_scheduler": "cosine_restarts"})
