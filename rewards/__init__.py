"""First-party reward plugins (installed as ``posttrain.rewards``), written against the public API.

* :mod:`posttrain.rewards.ensemble`: reward-model ensemble aggregation (mean, min, mean - k*std).

The reward math the engine applies itself lives in :mod:`posttrain.rl.algos`: PF-PPO filtering
(``filter_by_reward``) and the noisy-verifier corrections (``backward_correction``,
``forward_correction``); a verifier's measured rates are read by
:func:`posttrain.verification.rates.rates_from_report`.
"""
__all__ = ["aggregate_ensemble"]


def __getattr__(name: str):
    # Lazy: the ensemble math lives in posttrain.models.reward, whose package imports
    # transformers (seconds).
    if name == "aggregate_ensemble":
        from posttrain.rewards.ensemble import aggregate_ensemble

        return aggregate_ensemble
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
