"""The `process_reward_model` reward channel: a `prm` stage's model gives every step a reward.

Each sampled answer is split into steps at the PRM's ``step_separator`` (read from its prm.json),
the PRM scores each step (posttrain.models.process_reward), and the channel returns, per answer,
one reward per step and the character where each step ends. ``options.reward``:

* ``score``: the step's P(right) (Lightman et al. 2023, arXiv 2305.20050);
* ``progress``: PAV's process advantage, the change of P(right) from the step before (the score
  at the end of the prompt before the first step; Setlur et al. 2024, arXiv 2410.08146, eq. 2;
  posttrain.rl.algos.process.step_progress).

The loop places them, times the channel's weight, on the tokens that end the steps
(posttrain.rl.loop.advantages), where a token-level advantage estimator adds them to the outcome's
token rewards. The channel's logged score is the answer's summed step reward.
"""
from __future__ import annotations

from typing import Any

from posttrain.errors import ConfigError
from posttrain.rl.algos.process import step_char_ends, step_progress
from posttrain.rl.rewards import ChannelScores, RewardChannelConfig
from posttrain.rl.scored import ProcessRewards

REWARD_KINDS = ("score", "progress")


def _options(config: RewardChannelConfig) -> tuple[str, int]:
    unknown = sorted(set(config.options) - {"reward", "batch_size"})
    if unknown:
        raise ConfigError(f"reward channel '{config.channel_name}': unknown process_reward_model option(s) "
                          f"{', '.join(unknown)}; expected some of: batch_size, reward.")
    kind = config.options.get("reward", "score")
    if kind not in REWARD_KINDS:
        raise ConfigError(f"reward channel '{config.channel_name}': options.reward {kind!r}; expected score or progress")
    return kind, int(config.options.get("batch_size", 64))


def process_model_problem(config: RewardChannelConfig, run_dir: Any) -> str | None:
    """What preflight reports for a process_reward_model entry: bad options, or a folder that is
    not a `prm` stage's model (a model of an earlier stage of this run may not exist yet)."""
    from pathlib import Path

    from posttrain.common.config import model_dir_problem
    from posttrain.models.process_reward import PRM_FILE

    try:
        _options(config)
    except ConfigError as err:
        return str(err)
    problem = model_dir_problem(config.process_reward_model, "process_reward_model", run_dir)
    if problem:
        return problem.removeprefix("process_reward_model: ")
    folder = Path(config.process_reward_model)
    if folder.is_dir() and not (folder / PRM_FILE).exists():
        return f"{folder} has no {PRM_FILE}: expected the model folder of a `prm` stage"
    return None


class ProcessRewardChannel:
    """Scores each step of each completion with a process reward model."""

    def __init__(self, config: RewardChannelConfig, device: Any = "cpu"):
        from posttrain.models.process_reward import load_process_reward_model

        self.name = config.channel_name
        self.kind, batch_size = _options(config)
        self.prm = load_process_reward_model(config.process_reward_model, device=device)
        self.prm.batch_size = batch_size

    def check_columns(self, columns: list[str], source: str) -> None:
        """Reads only the prompt."""

    def use_group_size(self, group_size: int) -> None:
        """Scores each completion on its own."""

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> ChannelScores:
        steps = [self.prm.split(c) for c in completions]
        scores, initial = self.prm.step_scores(columns["prompt"], steps)
        if self.kind == "progress":
            scores = [step_progress(row, first) for row, first in zip(scores, initial)]
        ends = [_char_ends(c, s, self.prm.separator) for c, s in zip(completions, steps)]
        return ChannelScores([sum(row) for row in scores], None, steps=ProcessRewards(scores, ends))


def _char_ends(completion: str, steps: list[str], separator: str) -> list[int]:
    """Where each step ends in the completion's own text (the split dropped empty pieces, so the
    steps are found in order rather than assumed to be joined by exactly one separator)."""
    if not completion:
        return step_char_ends(steps, separator)
    ends, position = [], 0
    for step in steps:
        found = completion.find(step, position)
        if found < 0:  # cannot happen for pieces of the completion; keep the order anyway
            found = position
        position = found + len(step)
        ends.append(position - 1)
    return ends
