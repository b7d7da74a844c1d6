"""Corrections for binary rewards from an imperfect verifier (pure functions of tensors/floats).

Cai, Wang, Liu, Liu, Niu, Sugiyama, "Reinforcement Learning with Verifiable yet Noisy Rewards
under Imperfect Verifiers", arXiv 2510.00915. The verifier is a stochastic channel that turns the
latent correctness ``R* in {0, 1}`` of a completion into the observed reward ``R~ in {0, 1}``:

* false-positive rate ``rho_0 = P(R~ = 1 | R* = 0)`` (the verifier passes a wrong answer);
* false-negative rate ``rho_1 = P(R~ = 0 | R* = 1)`` (the verifier fails a right answer).

``posttrain verify -v NAME -d labelled.jsonl --json`` measures both on labelled completions:
:func:`posttrain.verification.rates.rates_from_report` reads them (``fp_rate`` is rho_0, ``fn_rate`` is rho_1).

Two corrections, both defined only while ``rho_0 + rho_1 < 1`` (a verifier that is better than a
coin flip in Youden's sense, ``J = 1 - rho_0 - rho_1 > 0``; otherwise its reward carries no
usable sign and every function here raises ValueError):

* :func:`backward_correction` (the paper's PGBC): ``R^ = (R~ - rho_0) / (1 - rho_0 - rho_1)``,
  an unbiased estimate of ``R*`` and hence of the clean policy gradient.
* :func:`forward_correction` (the paper's PGFC): the score-function term of each sample is
  weighted by ``w_1 = rho_1`` when the verifier passed it and ``w_0 = rho_1 - 1`` when it failed
  it; only rho_1 is needed, and the expected update is ``(1 - rho_0 - rho_1)`` times the clean
  gradient (same direction, smaller step).

Where we differ from / could not check against the paper: the backward formula and the forward
weights ``w_0 = rho_1 - 1``, ``w_1 = rho_1`` are as the paper states them (read from its summary;
we could not open its Section 3). The alignment property of the forward weights is derived in
:func:`forward_correction`'s docstring and tested by exact expectation here, so the formula
does not rest on our reading alone.

A caveat worth knowing before wiring these into GRPO: both corrections are affine maps of the
reward with the same coefficients for every sample. GRPO's group mean-centering removes the
additive part and its std scaling removes the multiplicative part, so under
``group_normalized`` advantages with std scaling both corrections change nothing; with
mean-centering only (Dr.GRPO) the backward correction rescales the advantages by
``1 / (1 - rho_0 - rho_1)`` and the forward one is a no-op. They change the update where the
reward is used without a per-group baseline (REINFORCE-style estimators, a fixed baseline, or a
batch baseline mixed across verifiers with different noise rates). An RL stage whose advantages
cancel (or only rescale) a configured correction gets a warning from `posttrain validate`
(posttrain.rl.loop.advantages.noise_correction_warnings; docs/verifiers.md has the table).
"""
from __future__ import annotations

import math
from typing import overload

import torch


def check_noise_rates(fp_rate: float, fn_rate: float) -> None:
    """Raise ValueError unless 0 <= rho_0, rho_1 < 1 and rho_0 + rho_1 < 1.

    >>> check_noise_rates(0.1, 0.2)
    >>> check_noise_rates(0.6, 0.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: noise rates fp_rate=0.6 + fn_rate=0.5 = 1.1 must be < 1: ...
    """
    for name, rate in (("fp_rate", fp_rate), ("fn_rate", fn_rate)):
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or math.isnan(rate):
            raise ValueError(f"{name}={rate!r}; expected a probability in [0, 1)")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name}={rate!r}; expected a probability in [0, 1)")
    total = fp_rate + fn_rate
    if total >= 1.0:
        raise ValueError(
            f"noise rates fp_rate={fp_rate:g} + fn_rate={fn_rate:g} = {total:g} must be < 1: "
            "such a verifier passes wrong answers at least as often as right ones "
            "(1 - fp_rate - fn_rate <= 0), so no correction can recover the clean reward"
        )


def _check_fn_rate(fn_rate: float) -> None:
    if not isinstance(fn_rate, (int, float)) or isinstance(fn_rate, bool) \
            or math.isnan(fn_rate) or not 0.0 <= fn_rate < 1.0:
        raise ValueError(f"fn_rate={fn_rate!r}; expected a probability in [0, 1)")


def _check_binary(rewards: torch.Tensor, what: str) -> None:
    # NaN is the loop's "unscorable" marker and passes through untouched.
    finite = rewards[~torch.isnan(rewards)]
    bad = finite[(finite != 0) & (finite != 1)]
    if bad.numel():
        raise ValueError(f"{what} expects binary rewards in {{0, 1}} (NaN allowed), "
                         f"got {bad[0].item():g}")


@overload
def backward_correction(rewards: float, fp_rate: float, fn_rate: float) -> float: ...
@overload
def backward_correction(rewards: torch.Tensor, fp_rate: float, fn_rate: float) -> torch.Tensor: ...


def backward_correction(rewards, fp_rate, fn_rate):
    """Unbiased surrogate of the clean reward (PGBC, arXiv 2510.00915):
    ``R^ = (R~ - rho_0) / (1 - rho_0 - rho_1)``.

    Unbiased: given R* = 1 the verifier passes with probability 1 - rho_1, so
    ``E[R^ | R*=1] = ((1 - rho_1) - rho_0) / (1 - rho_0 - rho_1) = 1``; given R* = 0 it passes
    with probability rho_0, so ``E[R^ | R*=0] = (rho_0 - rho_0) / (...) = 0``. Hence
    ``E[R^ grad log pi] = E[R* grad log pi]``, the clean policy gradient. The price is variance:
    a pass becomes ``(1 - rho_0) / J`` and a fail ``-rho_0 / J`` with ``J = 1 - rho_0 - rho_1``.

    ``rewards``: a float or a tensor of any shape with values in {0, 1}; NaN ("unscorable")
    passes through. Returns the same kind (float or tensor of the same shape).

    >>> backward_correction(torch.tensor([1.0, 0.0]), fp_rate=0.1, fn_rate=0.2)
    tensor([ 1.2857, -0.1429])
    >>> backward_correction(1.0, 0.0, 0.0)
    1.0
    """
    check_noise_rates(fp_rate, fn_rate)
    youden = 1.0 - fp_rate - fn_rate
    if isinstance(rewards, torch.Tensor):
        _check_binary(rewards, "backward_correction")
        return (rewards - fp_rate) / youden
    if float(rewards) not in (0.0, 1.0) and not math.isnan(float(rewards)):
        raise ValueError(f"backward_correction expects a binary reward in {{0, 1}}, got {rewards!r}")
    return (float(rewards) - fp_rate) / youden


@overload
def forward_correction(rewards: float, fn_rate: float,
                       fp_rate: float | None = None) -> float: ...
@overload
def forward_correction(rewards: torch.Tensor, fn_rate: float,
                       fp_rate: float | None = None) -> torch.Tensor: ...


def forward_correction(rewards, fn_rate, fp_rate=None):
    """Per-sample score-function weights of PGFC (arXiv 2510.00915): ``w_1 = rho_1`` for an
    observed pass, ``w_0 = rho_1 - 1`` for an observed fail, i.e. ``w = R~ - (1 - rho_1)``.

    Use the weights where the reward multiplies ``grad log pi`` (the update is
    ``E[w(R~) grad log pi]``). Only the false-negative rate is needed. Why the direction is the
    clean one (our derivation; the paper states the weights): given R* = 1,
    ``E[w | R*=1] = (1 - rho_1) rho_1 + rho_1 (rho_1 - 1) = 0``; given R* = 0,
    ``E[w | R*=0] = rho_0 rho_1 + (1 - rho_0)(rho_1 - 1) = -(1 - rho_0 - rho_1)``. So
    ``E[w grad log pi] = -(1 - rho_0 - rho_1) sum_{y wrong} grad pi(y)
    = (1 - rho_0 - rho_1) grad P(correct)`` because ``sum_y grad pi(y) = 0``: the clean gradient
    scaled by ``J = 1 - rho_0 - rho_1``, which is positive exactly when rho_0 + rho_1 < 1. The
    weights are bounded in ``[-1, 1)`` (the backward correction's are not), which is why the
    paper finds PGFC more stable under heavy noise.

    ``fp_rate`` is optional and only checked: pass it to get the ValueError when
    rho_0 + rho_1 >= 1 (then the update points downhill).

    >>> forward_correction(torch.tensor([1.0, 0.0]), fn_rate=0.25)
    tensor([ 0.2500, -0.7500])
    """
    if fp_rate is None:
        _check_fn_rate(fn_rate)
    else:
        check_noise_rates(fp_rate, fn_rate)
    if isinstance(rewards, torch.Tensor):
        _check_binary(rewards, "forward_correction")
        return rewards - (1.0 - fn_rate)
    if float(rewards) not in (0.0, 1.0) and not math.isnan(float(rewards)):
        raise ValueError(f"forward_correction expects a binary reward in {{0, 1}}, got {rewards!r}")
    return float(rewards) - (1.0 - fn_rate)
