"""OTC's tool-integrated reward (arXiv 2504.14870) on hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from posttrain.rl.algos import otc_mapping, otc_tool_reward


def test_mapping_cases():
    """f(0,0)=0; f(m,0)=m; f(m,n)=2mn/(m+n): f(2,2)=2, f(1,3)=6/4=1.5, f(6,2)=24/8=3."""
    m = torch.tensor([0.0, 4.0, 2.0, 1.0, 6.0])
    n = torch.tensor([0.0, 0.0, 2.0, 3.0, 2.0])
    assert otc_mapping(m, n).tolist() == pytest.approx([0.0, 4.0, 2.0, 1.5, 3.0], abs=1e-7)


def test_grpo_groups_take_n_from_their_correct_episodes():
    """Group 0: correct episodes use 2 and 4 calls -> n=2. m=2: sin(pi/2)=1; m=4: f=16/6=8/3,
    sin((8/3)*pi/4)=sin(2pi/3)=0.8660254; m=1 (wrong): f=4/3, sin(pi/3)=0.8660254; m=3: f=12/5,
    sin(0.6 pi)=0.9510565.
    Group 1: the correct episode used no call -> n=0. m=0: 1; m=1: cos(pi/(2+c)) = cos(pi/3) = 0.5
    with c=1; m=3: cos(3pi/7)=0.2225209; m=5: cos(5pi/11)=0.1423148.
    Group 2: nothing correct -> n=0 as in the paper's code: m=2: cos(2pi/5)=0.3090170."""
    calls = torch.tensor([2.0, 4.0, 1.0, 3.0, 0.0, 1.0, 3.0, 5.0, 2.0, 2.0, 2.0, 2.0])
    correct = torch.tensor([True, True, False, False, True, False, True, True, False, False, False, False])
    got = otc_tool_reward(calls, correct, group_size=4, c=1.0)
    expected = [1.0, math.sin(2 * math.pi / 3), math.sin(math.pi / 3), math.sin(0.6 * math.pi),
                1.0, 0.5, math.cos(3 * math.pi / 7), math.cos(5 * math.pi / 11),
                *[math.cos(2 * math.pi / 5)] * 4]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


def test_ppo_form_and_the_smoothing_constant():
    """No group: n=0, r = cos(m pi / (2m + c)); c=3: m=1 -> cos(pi/5)=0.8090170, m=2 -> cos(2pi/7)=0.6234898."""
    got = otc_tool_reward(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([True, True, True]), group_size=None, c=3.0)
    assert got.tolist() == pytest.approx([1.0, math.cos(math.pi / 5), math.cos(2 * math.pi / 7)], abs=1e-6)
    with pytest.raises(ValueError, match="c must be positive"):
        otc_tool_reward(torch.tensor([1.0]), torch.tensor([True]), None, c=0.0)


def test_fewer_calls_among_correct_is_preferred():
    """Within a group, a correct episode with the fewest calls gets the full reward and every
    other correct one strictly less."""
    calls = torch.tensor([1.0, 2.0, 3.0, 6.0])
    got = otc_tool_reward(calls, torch.ones(4, dtype=torch.bool), group_size=4)
    assert got[0] == 1.0 and bool((got[1:] < 1.0).all()) and bool((got[1:] > 0).all())
