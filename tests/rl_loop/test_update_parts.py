"""Pieces of the update: per-model gradient clipping, the logged entropy, the replica check."""
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from posttrain.common.distributed import training_setup
from posttrain.errors import StageFailed
from posttrain.rl.loop.dist import Processes, check_replicas
from posttrain.rl.loop.update import clip_gradients


def _with_grad(shape, norm):
    p = torch.nn.Parameter(torch.zeros(shape))
    p.grad = torch.full(shape, norm / (torch.tensor(shape).prod().item() ** 0.5))
    return p


def test_policy_and_critic_are_clipped_each_to_its_own_bound_after_one_unscale():
    policy, critic = torch.nn.Module(), torch.nn.Module()
    policy.w = _with_grad((4, 4), 5.0)
    critic.w = _with_grad((3,), 3.0)
    acc = Accelerator(cpu=True)
    calls = []
    acc.unscale_gradients = lambda *a, **k: calls.append(1)  # fp16 would raise on a second unscale
    session = SimpleNamespace(accelerator=acc, unwrapped=SimpleNamespace(policy=policy, critic=critic),
                              config=SimpleNamespace(max_grad_norm=1.0, critic_max_grad_norm=2.0))
    norms = clip_gradients(session)
    assert calls == [1]
    assert norms == {"grad_norm": pytest.approx(5.0, rel=1e-6), "grad_norm/critic": pytest.approx(3.0, rel=1e-6)}
    assert float(policy.w.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    assert float(critic.w.grad.norm()) == pytest.approx(2.0, rel=1e-5)


class _TwoRanks(Processes):
    """Rank 0 of two whose peer holds ``peer``'s per-tensor sums (all_gather without a process group)."""

    def __init__(self, peer):
        super().__init__(rank=0, size=2)
        object.__setattr__(self, "peer", peer)

    def gather_rows(self, local):
        return torch.cat([local, self.peer(local)]), slice(0, local.shape[0])


def test_replica_check_fails_when_processes_weights_differ():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    same = check_replicas(model, _TwoRanks(lambda sums: sums.clone()), zero=0)
    assert isinstance(same, float)

    def drifted(sums):
        out = sums.clone()
        out[2] += 1e-9  # the second layer's weight on rank 1
        return out

    with pytest.raises(StageFailed, match=r"process 1's weights differ .* in 1 of 4 tensors \(first: 1.weight\)"):
        check_replicas(model, _TwoRanks(drifted), zero=2)
    assert check_replicas(model, _TwoRanks(drifted), zero=3) is None  # partitions: nothing to compare
    assert check_replicas(model, Processes(), zero=0) is None


def test_training_setup_names_the_module_when_nothing_wraps_it():
    setup = training_setup(torch.nn.Linear(2, 2), Processes().size)
    assert setup == {"processes": 1, "wrapper": "Linear", "zero": 0, "offload": "none"}
