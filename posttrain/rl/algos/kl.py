"""KL estimators, KL-penalised token rewards, and KL coefficient controllers.

Shapes: B = sequences, T = response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

KL_KINDS = ("k1", "k2", "k3")


def kl_estimate(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kind: str = "k3",
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi -> (B, T).

    J. Schulman, "Approximating KL Divergence" (blog, 2020). With ``log r = log pi_ref(y_t) -
    log pi(y_t)`` (= ``ref_logprobs - logprobs``) and y_t drawn from pi:

    - ``k1 = -log r``                  unbiased, high variance, can be negative
    - ``k2 = 0.5 * (log r)^2``         biased, low variance, >= 0
    - ``k3 = (r - 1) - log r``         unbiased, low variance, >= 0; the estimator of GRPO,
      Shao et al. 2024 (DeepSeekMath), arXiv 2402.03300, eq. 4, and of TRL's ``beta`` term

    Differentiable in ``logprobs`` (use k3 as a loss term, as GRPO does; k1 as a reward
    penalty, as PPO-RLHF does). Positions with ``response_mask == 0`` get 0 when a mask is given.
    """
    # logprobs, ref_logprobs: (B, T)
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ"
        )
    log_r = ref_logprobs - logprobs
    if kind == "k1":
        kl = -log_r
    elif kind == "k2":
        kl = 0.5 * log_r**2
    elif kind == "k3":
        kl = torch.exp(log_r) - 1.0 - log_r
    else:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")
    if response_mask is not None:
        kl = torch.where(response_mask.bool(), kl, torch.zeros_like(kl))
    return kl


def turn_kl_weights(token_turns: torch.Tensor, weights: Sequence[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-token factors on the loss's KL term by the assistant turn each token belongs to -> (B, T).

    A. Kumar et al. 2024, "Training Language Models to Self-Correct via Reinforcement Learning"
    (SCoRe), arXiv 2409.12917, Stage I: the first attempt is held to the reference by a KL
    coefficient far larger than the later attempt's, so that RL improves the correction without
    moving the first answer. ``token_turns`` (B, T) long: the place of each token's turn among the
    conversation's assistant turns (0 = the first), -1 where no generated token is. A token's
    factor is ``weights[min(turn, len(weights) - 1)]`` (the last entry holds for later turns), 0
    where the turn is -1; the loss's KL term becomes ``kl_coef * factor_t * KL_t``.
    """
    if not weights:
        raise ValueError("turn_kl_weights needs at least one weight")
    table = torch.tensor([0.0, *weights], dtype=dtype, device=token_turns.device)
    return table[token_turns.clamp(min=-1, max=len(weights) - 1) + 1]


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask 1 in each row -> (B,) long; -1 for an empty row."""
    # response_mask: (B, T)
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return torch.where(response_mask.bool(), positions, -1).max(dim=1).values


@torch.no_grad()
def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kind: str = "k1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-RLHF token rewards ``r_t = -kl_coef * KL_t + [t == last] * score`` -> (rewards, stats).

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593,
    the KL-penalised reward ``R(x, y) = r(x, y) - beta * log(pi(y|x) / rho(y|x))``, with the
    KL split per token (k1 by default, as there) and the sequence score placed on the last
    response token. Rewards are 0 on padded positions; a row with no response token (e.g. a
    masked truncated completion) gets no score and no penalty. No gradient (rewards are targets).

    Returns rewards (B, T) and stats: ``kl`` = mean over sequences of the summed per-token KL
    (the quantity :class:`AdaptiveKLController` tracks), ``score_mean``, ``kl_coef``.
    """
    # scores: (B,); logprobs, ref_logprobs, response_mask: (B, T)
    if scores.dim() != 1 or scores.shape[0] != logprobs.shape[0]:
        raise ValueError(
            f"scores must be (B,) with B = {logprobs.shape[0]}, got {tuple(scores.shape)}"
        )
    if response_mask.shape != logprobs.shape:
        raise ValueError(
            f"response_mask {tuple(response_mask.shape)} must match logprobs "
            f"{tuple(logprobs.shape)}"
        )
    kl = kl_estimate(logprobs, ref_logprobs, kind, response_mask)  # (B, T), 0 on padding
    rewards = -kl_coef * kl
    last = last_token_index(response_mask)  # (B,)
    has_response = last >= 0
    rows = torch.arange(scores.shape[0], device=scores.device)[has_response]
    rewards[rows, last[has_response]] += scores[has_response].to(rewards.dtype)
    stats = {
        "kl": kl.sum(dim=1).mean(),
        "score_mean": scores.to(rewards.dtype).mean(),
        "kl_coef": rewards.new_tensor(float(kl_coef)),
    }
    return rewards, stats


class FixedKLController:
    """A constant KL coefficient with the controller interface (``value``, ``update``)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op; returns the (unchanged) coefficient."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller that steers the measured KL towards ``target``.

    Ziegler et al. 2019, arXiv 1909.08593, Sec. 2.2 (adaptive beta): after a batch of ``n_steps``
    samples with measured KL ``KL_t``,

        e_t = clip(KL_t / target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

    (the form of their released code, which OpenRLHF and TRL's old PPO copied). ``KL_t`` is the
    per-sequence KL (``stats["kl"]`` of :func:`kl_penalized_rewards`).

    >>> ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    >>> round(ctl.update(current_kl=12.0, n_steps=256), 6)   # e = clip(1, .2) = .2
    0.100512
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target!r}, {horizon!r}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update the coefficient from the measured KL; returns the new value."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])
