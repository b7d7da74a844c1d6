"""First-party reward plugins (installed as ``posttrain.rewards``), written against the public API.

* :mod:`posttrain.rewards.noisy`: corrections for binary rewards from an imperfect verifier
  (backward/forward correction, arXiv 2510.00915) and reading a verifier's measured FP/FN rates.
* :mod:`posttrain.rewards.filtering`: PF-PPO reward-based sample filtering (arXiv 2409.06957).
* :mod:`posttrain.rewards.ensemble`: reward-model ensemble aggregation (mean, min, mean - k*std).
"""
from posttrain.rewards.filtering import filter_by_reward
from posttrain.rewards.noisy import (
    backward_correction,
    check_noise_rates,
    forward_correction,
    rates_from_report,
)

__all__ = ["aggregate_ensemble", "backward_correction", "check_noise_rates", "filter_by_reward",
           "forward_correction", "rates_from_report"]


def __getattr__(name: str):
    # Lazy: the ensemble math lives in posttrain.models.reward, whose package imports
    # transformers (seconds); the noise corrections and filters need only torch.
    if name == "aggregate_ensemble":
        from posttrain.rewards.ensemble import aggregate_ensemble

        return aggregate_ensemble
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
