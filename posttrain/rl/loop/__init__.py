"""The online RL engine's loop: one loop for every variant (GRPO family and PPO).

Phases and their modules::

    sampling.py    prompts -> RolloutBatch (posttrain.rl.rollout) -> ScoredBatch (rewards.py);
                   DAPO dynamic sampling
    experience.py  ScoredBatch -> ExperienceBatch: trainer/reference log-probs, critic values,
                   overlong shaping (shaping.py), advantages (advantages.py), mismatch weights
    update.py      PPO epochs over minibatches with gradient accumulation and clipping
    trainer.py     the step and the stage run: checkpoints (checkpoint.py), metrics (metrics.py),
                   weight sync, final save; process groups via accelerate (dist.py)

The math is in :mod:`posttrain.rl.algos`; the knobs in :mod:`posttrain.rl.loop.config`.
Heavy imports happen in the modules, not here.
"""
from posttrain.rl.loop.config import BatchPlan, OnlineRLConfig

__all__ = ["BatchPlan", "OnlineRLConfig"]
