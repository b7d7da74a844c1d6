"""Reward channels: the `rewards:` list of an RL stage, scored and summed with weights.

A recipe lists one or more channels; the reward of a completion is ``sum_c weight_c * score_c``::

    rewards:
      - {function: "posttrain.rewards.arithmetic:final_number_matches", weight: 1.0}
      - {function: "./my_rewards.py:brevity", weight: 0.1, name: brevity}
      - {verifier: math, weight: 1.0, options: {tolerance: 1.0e-6}}
      - {reward_model: "${stages.rm.output}", weight: 0.5}

- ``function``: a batch reward function ``f(completions, **columns) -> list[float]``, called once
  per batch: a batched verifier whose scores may be any finite float (its 0/1 scores count as
  pass/fail). ``completions`` are the decoded completion strings; every dataset column arrives by
  name as a list aligned with them (``prompt`` included). A function that names its parameters
  gets only those; one with ``**kwargs`` gets all columns; ``options`` are bound to it. In a
  recipe, ``./file.py:fn`` paths are relative to the recipe's folder (from Python: to the working
  directory).
- ``verifier``: a verifier (:mod:`posttrain.verification`), per item or batched; its ``passed``
  verdicts give the channel's pass rate.
- A batched verifier or batch function with a ``group_size`` parameter (``majority_vote``)
  compares the completions of one prompt: the stage passes it its own ``group_size`` (the loop
  scores the G completions of each prompt contiguously), so it is not set by hand; an
  ``options.group_size`` that differs from the stage's is rejected by ``posttrain validate``,
  since a wrong divisor would silently mix the votes of neighbouring prompts.
- ``reward_model``: a sequence-classification reward model or ensemble, loaded with
  :func:`posttrain.models.reward.load_reward_model` (``options``: aggregation, std_coef,
  batch_size), scoring prompt+completion as it was trained.
- ``process_reward_model``: a `prm` stage's model (posttrain.rl.process_rewards): per-step rewards
  (``options.reward``: ``score``, each step's P(right), or ``progress``, PAV's change of it), given
  to the loop as token rewards at the step ends, times ``weight``. They are not part of the summed
  sequence reward (their sum per completion is logged as the channel's score); a token-level
  advantage estimator (reinforce_pp, gae) adds them to the outcome's token rewards.

Functions and verifiers are one plugin contract, loaded by one loader
(:mod:`posttrain.verification.loading`) and scored by one pool: a failed item (the call raised,
timed out, or returned a wrong-length list or a bad score) scores 0 and is counted (the metrics
``rewards/NAME/errors`` and ``/timeouts``), and once more than ``max_error_rate`` of the recent
items failed (judged over at least 8) the stage stops with a VerifierError naming the channel,
the failure and an example input. A batched call is all-or-nothing: when it raises, every item
of its batch has failed, so a batch of 8 or more stops the stage at once. Verifiers run in worker
threads or processes (``executor``) with a time limit (``timeout_s`` per item, x the items for a
batched one). With ``overlap_scoring`` the verifier and reward-model channels are scored on a
background thread while the loop computes log-probs (``RewardScorer.submit``). Batch
functions run in the loop's own thread, as before (user code such as math-verify's ``parse``
arms signal-based timeouts, which work only there), so a hanging function is not interrupted;
one that runs past its limit is logged.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from posttrain.common.config import StrictModel
from posttrain.errors import ConfigError, VerifierError
from posttrain.verification.contract import ExecutorChoice

#: The keys that name a channel's source; a channel sets exactly one.
SOURCES = ("function", "verifier", "reward_model", "process_reward_model")
#: The parameter through which a batched plugin is told G, the completions of each prompt.
GROUP_SIZE_OPTION = "group_size"


def takes_group_size(plugin) -> bool:
    """Whether a loaded plugin compares completions within a prompt's group: it is batched and
    names a ``group_size`` parameter (``majority_vote``). The RL stage then binds its own."""
    return plugin.batched and plugin.has_parameter(GROUP_SIZE_OPTION)


def group_size_problem(plugin, group_size: int) -> str | None:
    """Why ``plugin``'s bound ``group_size`` option cannot run in a stage sampling ``group_size``
    completions per prompt (None when it is unset, equal, or the plugin takes no group size)."""
    bound = plugin.options.get(GROUP_SIZE_OPTION)
    if not takes_group_size(plugin) or bound is None or bound == group_size:
        return None
    return (f"options.group_size is {bound!r} but the stage's group_size is {group_size}: {plugin.name!r} "
            f"would group the completions {bound!r} at a time while the stage samples {group_size} per prompt, "
            "mixing the votes of different prompts; remove options.group_size (the stage passes its own)")


class RewardChannelConfig(StrictModel):
    """One reward channel: exactly one of `function`, `verifier`, `reward_model`, `process_reward_model`."""

    function: str | None = Field(None, description="A batch reward function `f(completions, **columns) -> list[float]` (a batched verifier with unbounded scores): 'module:attr' or './file.py:fn'.")
    verifier: str | None = Field(None, description="A verifier reference (name, 'module:fn' or './file.py:fn'), scored through posttrain.verification.")
    reward_model: str | None = Field(None, description="Directory of a sequence-classification reward model (e.g. `${stages.rm.output}`).")
    process_reward_model: str | None = Field(None, description="Directory of a `prm` stage's model (e.g. `${stages.prm.output}`): per-step rewards at the tokens that end the steps, for token-level advantage estimators (reinforce_pp, gae); options.reward: score (each step's P(right)) or progress (PAV: its change from the step before).")
    weight: float = Field(1.0, description="Weight of this channel in the summed reward.")
    name: str | None = Field(None, description="Name used in metrics (default: the function/verifier name, or `reward_model`).")
    options: dict[str, Any] = Field(default_factory=dict, description="function/verifier: keyword options bound to it; reward_model: aggregation, std_coef, batch_size; process_reward_model: reward (score | progress), batch_size.")
    timeout_s: float = Field(10.0, gt=0, description="verifier: time limit per item in seconds (a batched call gets timeout_s x its items); a function runs inline and past this limit is logged, not interrupted.")
    workers: int = Field(2, ge=1, description="verifier: workers (threads or processes, see executor; a function runs inline).")
    executor: ExecutorChoice = Field("auto", description="verifier: where items are scored: thread, process (CPU-bound checks scale with cores; a stuck item is killed), or auto (the verifier's own choice: process for `math`).")
    max_error_rate: float = Field(0.1, ge=0, le=1, description="function/verifier: stop the stage when more than this fraction of items fail (raise, time out, or return a bad score).")
    noise_correction: Literal["none", "backward", "forward"] = Field("none", description="Correct a pass/fail channel for a noisy verifier (arXiv 2510.00915): backward = unbiased (r - fp)/(1 - fp - fn); forward = fn-rate reweighting. Needs fp_rate/fn_rate or rates_from. Group-normalised advantages cancel both (validate warns; see docs/verifiers.md).")
    fp_rate: float | None = Field(None, ge=0, lt=1, description="P(verifier passes | completion wrong), e.g. from `posttrain verify`.")
    fn_rate: float | None = Field(None, ge=0, lt=1, description="P(verifier fails | completion right).")
    rates_from: str | None = Field(None, description="A `posttrain verify --json` report to read fp_rate and fn_rate from (relative to the recipe's folder).")

    @model_validator(mode="after")
    def _noise_rates(self) -> RewardChannelConfig:
        if self.noise_correction == "none":
            return self
        if self.rates_from is None and (self.fn_rate is None or (self.noise_correction == "backward" and self.fp_rate is None)):
            raise ValueError(f"noise_correction {self.noise_correction!r} needs fn_rate"
                             + (" and fp_rate" if self.noise_correction == "backward" else "") + ", or rates_from")
        if self.rates_from is not None and (self.fp_rate is not None or self.fn_rate is not None):
            raise ValueError("give either rates_from or fp_rate/fn_rate, not both")
        return self

    @model_validator(mode="after")
    def _exactly_one_source(self) -> RewardChannelConfig:
        set_keys = [k for k in SOURCES if getattr(self, k)]
        if len(set_keys) != 1:
            raise ValueError("a reward channel needs exactly one of `function`, `verifier`, `reward_model`, "
                             "`process_reward_model`"
                             + (f" (got {', '.join(set_keys)})" if set_keys else ""))
        if self.process_reward_model and self.noise_correction != "none":
            raise ValueError("noise_correction corrects a pass/fail channel; a process_reward_model channel gives "
                             "per-step probabilities: set noise_correction: none")
        if self.function and ":" not in self.function:
            raise ValueError(f"function {self.function!r}: expected 'module:attr' or './file.py:fn'")
        return self

    @property
    def source(self) -> str:
        return next(k for k in SOURCES if getattr(self, k))

    @property
    def channel_name(self) -> str:
        if self.name:
            return self.name
        if self.function:
            return self.function.rpartition(":")[2]
        if self.verifier:
            return self.verifier.rpartition(":")[2] or self.verifier
        return self.source


@dataclass
class ChannelScores:
    """One channel's verdict on a batch: scores (B,), pass/fail (B,) or None, failed items."""

    scores: list[float]
    passed: list[bool] | None
    errors: int = 0    # items whose check raised or returned a bad score
    timeouts: int | None = None  # verifier channels: items past timeout_s (a hung check), apart from errors
    steps: Any = None  # process_reward_model channels: a posttrain.rl.scored.ProcessRewards (unweighted)


def _example(completions: list[str], columns: dict[str, list[Any]], i: int = 0) -> str:
    text = repr({"completion": completions[i], **{k: v[i] for k, v in columns.items()}})
    return text if len(text) <= 300 else text[:300] + "..."


def _checked_scores(out: Any, completions: list[str], columns: dict[str, list[Any]], who: str) -> list[float]:
    """Scores as floats; a wrong length or a non-numeric/non-finite value is the channel's bug."""
    if not isinstance(out, (list, tuple)) or len(out) != len(completions):
        got = f"{type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") else type(out).__name__
        raise VerifierError(f"{who} returned {got}; expected a list of {len(completions)} floats, one per completion.")
    scores = []
    for i, value in enumerate(out):
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise VerifierError(f"{who} returned {value!r} for item {i}; expected a finite float. "
                                f"Input: {_example(completions, columns, i)}")
        scores.append(score)
    return scores


class PluginChannel:
    """A `function:` or `verifier:` entry: one plugin contract. A batch reward function is a
    batched verifier whose scores may be any finite number; both are scored by a VerifierPool
    (errors and timeouts counted, the stage stopped past max_error_rate, naming the channel and
    an example input; functions run inline, see the module docstring). A function's 0/1 scores
    are its pass/fail verdicts."""

    def __init__(self, config: RewardChannelConfig):
        from posttrain.verification.pool import VerifierPool

        self.name = config.channel_name
        self.verifier = load_plugin(config)
        self.is_function = config.function is not None
        self.grouped = takes_group_size(self.verifier)
        self.pool = VerifierPool(self.verifier, timeout_s=config.timeout_s, workers=config.workers,
                                 max_error_rate=config.max_error_rate, inline=self.is_function,
                                 executor="thread" if self.is_function else config.executor)

    def check_columns(self, columns: list[str], source: str) -> None:
        try:
            self.verifier.check_columns(columns, source)
        except VerifierError as err:
            raise ConfigError(f"reward channel '{self.name}' ({self.verifier.ref}): {err}") from err

    def use_group_size(self, group_size: int) -> None:
        """Bind the stage's G for a grouped plugin (see :func:`takes_group_size`); a different
        G bound by hand is a ConfigError (`posttrain validate` reports it before any run)."""
        if not self.grouped:
            return
        problem = group_size_problem(self.verifier, group_size)
        if problem:
            raise ConfigError(f"reward channel '{self.name}': {problem}")
        self.verifier.options[GROUP_SIZE_OPTION] = group_size

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> ChannelScores:
        try:
            batch = self.pool.run(completions, columns)
        except VerifierError as err:
            raise VerifierError(f"reward channel '{self.name}': {err}") from err
        verdicts = [r.passed if r is not None else None for r in batch.results]
        passed = None if all(v is None for v in verdicts) else [bool(v) for v in verdicts]
        if passed is None and self.is_function and all(s in (0.0, 1.0) for s in batch.scores):
            passed = [s == 1.0 for s in batch.scores]
        return ChannelScores(list(batch.scores), passed, batch.stats.errors, batch.stats.timeouts)

    def close(self) -> None:
        self.pool.close()


def load_plugin(config: RewardChannelConfig):
    """The LoadedVerifier of a `function:` or `verifier:` entry, with its options bound; a
    reference that does not load is a ConfigError naming the channel."""
    from posttrain.verification.loading import load_batch_function, load_verifier

    try:
        if config.function:
            return load_batch_function(config.function, **config.options)
        return load_verifier(config.verifier, **config.options)
    except VerifierError as err:
        raise ConfigError(f"reward channel '{config.channel_name}': {err}") from err


class RewardModelChannel:
    """A reward model (or ensemble) from posttrain.models.reward scoring (prompt, completion).

    A chat prompt (message list) gets its completion as an assistant message, so the pair is
    rendered through the chat template exactly as the reward model was trained on it.
    """

    def __init__(self, config: RewardChannelConfig, device: Any = "cpu"):
        from posttrain.models.reward import load_reward_model

        self.name = config.channel_name
        accepted = set(inspect.signature(load_reward_model).parameters) - {"path", "device"}
        unknown = sorted(set(config.options) - accepted)
        if unknown:
            raise ConfigError(f"reward channel '{self.name}': unknown reward_model option(s) {', '.join(unknown)}; "
                              f"expected some of: {', '.join(sorted(accepted))}.")
        self.scorer = load_reward_model(config.reward_model, device=device, **config.options)

    def check_columns(self, columns: list[str], source: str) -> None:
        """Reads only the prompt."""

    def use_group_size(self, group_size: int) -> None:
        """Scores each completion on its own."""

    def score(self, completions: list[str], columns: dict[str, list[Any]]) -> ChannelScores:
        prompts = columns["prompt"]
        paired = [[{"role": "assistant", "content": c}] if isinstance(p, list) else c
                  for p, c in zip(prompts, completions)]
        out = self.scorer.score(prompts, paired).tolist()
        return ChannelScores(_checked_scores(out, completions, columns, f"reward channel '{self.name}'"), None)


def _channel_problem(config: RewardChannelConfig, run_dir: Any, columns: list[str] | None, source: str,
                     group_size: int | None) -> str | None:
    from posttrain.common.config import model_dir_problem

    if config.process_reward_model:
        from posttrain.rl.process_rewards import process_model_problem

        return process_model_problem(config, run_dir)
    if config.reward_model:
        from pathlib import Path

        from posttrain.models.reward import ENSEMBLE_FILE, ensemble_members

        if (Path(config.reward_model) / ENSEMBLE_FILE).is_file():  # an ensemble: its members are models
            try:
                ensemble_members(Path(config.reward_model))
            except ConfigError as err:
                return str(err)
            return None
        problem = model_dir_problem(config.reward_model, "reward_model", run_dir)
        return problem and problem.removeprefix("reward_model: ")
    try:
        plugin = load_plugin(config)
        if columns is not None:
            plugin.check_columns(columns, source)
    except (ConfigError, VerifierError) as err:
        return str(err.__cause__ or err)  # the key already names the channel
    return group_size_problem(plugin, group_size) if group_size is not None else None


def reward_problems(configs: list[RewardChannelConfig], key: str, run_dir: Any, columns: list[str] | None,
                    source: str, group_size: int | None = None) -> list[str]:
    """What preflight reports for a `rewards:` list, one line per broken entry ``key[i]``: a
    function or verifier that does not load, a reward model folder that is missing or not a model,
    columns it reads that the data (``columns``, None = not checked) lacks, a grouped plugin's
    ``options.group_size`` that differs from the stage's ``group_size`` (when given). Loads
    plugins (their import runs), never a model."""
    problems = []
    for i, config in enumerate(configs):
        problem = _channel_problem(config, run_dir, columns, source, group_size)
        if problem:
            problems.append(f"{key}[{i}] ({config.source}): {problem}")
    return problems


def build_channel(config: RewardChannelConfig, device: Any = "cpu"):
    """The channel object for one `rewards:` entry (loads its function, verifier or model)."""
    if config.process_reward_model:
        from posttrain.rl.process_rewards import ProcessRewardChannel

        return ProcessRewardChannel(config, device)
    if config.reward_model:
        return RewardModelChannel(config, device)
    return PluginChannel(config)


class NoiseCorrection:
    """Applies posttrain.rl.algos.noisy's backward/forward correction to a channel's 0/1 scores.

    Both are affine in the score (the same ``a r + b`` for every completion): a group baseline with
    std scaling (GRPO) cancels them entirely, a baseline alone (Dr.GRPO, RLOO) leaves only the
    backward one's scale; they change the update with a critic (PPO/GAE) or next to an unscaled
    term in the reward. `posttrain validate` warns when a stage cancels (or only rescales) one
    (posttrain.rl.loop.advantages.noise_correction_warnings; the table is in docs/verifiers.md).
    """

    def __init__(self, config: RewardChannelConfig):
        from posttrain.rl.algos import check_noise_rates
        from posttrain.verification.rates import rates_from_report

        self.kind = config.noise_correction
        if config.rates_from is not None:
            self.fp_rate, self.fn_rate = rates_from_report(config.rates_from)
        else:
            self.fp_rate, self.fn_rate = config.fp_rate or 0.0, config.fn_rate
        try:
            check_noise_rates(self.fp_rate, self.fn_rate)
        except ValueError as exc:
            raise ConfigError(f"reward channel '{config.channel_name}': {exc}") from None

    def __call__(self, scores, name: str):
        from posttrain.rl.algos import backward_correction, forward_correction

        if not all(float(s) in (0.0, 1.0) for s in scores):
            raise VerifierError(f"reward channel '{name}': noise_correction needs pass/fail (0/1) scores, got {scores[:5].tolist()}...")
        if self.kind == "backward":
            return backward_correction(scores, self.fp_rate, self.fn_rate)
        return forward_correction(scores, self.fn_rate, self.fp_rate)


#: The channel name under which an episode's per-turn environment rewards are logged (weight 1).
ENVIRONMENT_CHANNEL = "environment"


class RewardScorer:
    """All channels of a stage: ``score(rollout, rows)`` -> a ScoredBatch with the weighted sum.

    ``rows[i]`` is the dataset row (prompt + columns) that completion ``i`` answers.
    """

    def __init__(self, configs: list[RewardChannelConfig], device: Any = "cpu"):
        self.configs = list(configs)
        self.channels = [build_channel(c, device) for c in self.configs]
        self.corrections = {c.channel_name: NoiseCorrection(c) for c in self.configs if c.noise_correction != "none"}
        self._background = None  # a thread for submit(), started on first use

    def check_columns(self, columns: list[str], source: str) -> None:
        """Fail before any rollout when a channel needs a column the data lacks."""
        for channel in self.channels:
            channel.check_columns(columns, source)

    def score(self, rollout: Any, rows: list[dict[str, Any]], group_size: int):
        """Score every channel now, on this thread; return the ScoredBatch."""
        self.use_group_size(group_size)
        completions, columns = self._inputs(rollout, rows)
        outs = self.score_channels(range(len(self.channels)), completions, columns)
        return self.combine(rollout, rows, outs, group_size)

    def submit(self, rollout: Any, rows: list[dict[str, Any]], group_size: int):
        """Start scoring in the background; returns a PendingScores to ``join`` before advantages.

        Verifier and reward-model channels are scored on a background thread (their pools have
        their own workers) while the caller goes on (the loop computes log-probs meanwhile);
        batch functions run at ``join``, on the caller's thread (they may arm SIGALRM).
        """
        from concurrent.futures import ThreadPoolExecutor

        from posttrain.rl.scored import PendingScores

        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="reward-scoring")
        self.use_group_size(group_size)
        completions, columns = self._inputs(rollout, rows)
        later = [i for i, ch in enumerate(self.channels) if getattr(ch, "is_function", False)]
        now = [i for i in range(len(self.channels)) if i not in later]
        future = self._background.submit(_timed, self.score_channels, now, completions, columns)
        return PendingScores(self, rollout, rows, group_size, future, later,
                             self.join_timeout_s(len(completions)), (completions, columns))

    def use_group_size(self, group_size: int) -> None:
        """Tell the channels G: rows g*G .. g*G+G-1 of every batch are the completions of one prompt."""
        for channel in self.channels:
            channel.use_group_size(group_size)

    def join_timeout_s(self, n: int) -> float:
        """How long ``join`` waits for the background channels: every item at its timeout, + 60 s."""
        return 60.0 + sum(c.timeout_s for c in self.configs if c.source in ("function", "verifier")) * max(1, n)

    @staticmethod
    def _inputs(rollout: Any, rows: list[dict[str, Any]]):
        return list(rollout.completions), {key: [row[key] for row in rows] for key in rows[0]}

    def score_channels(self, indices, completions: list[str], columns: dict[str, list[Any]]) -> dict[int, ChannelScores]:
        """Each listed channel's scores (channel index -> ChannelScores)."""
        return {i: self.channels[i].score(completions, columns) for i in indices}

    def combine(self, rollout: Any, rows: list[dict[str, Any]], outs: dict[int, ChannelScores], group_size: int):
        """The ScoredBatch of every channel's scores: noise corrections, weights, the sum."""
        import torch

        from posttrain.rl.scored import ScoredBatch

        scores, passed, errors, timeouts, process = {}, {}, {}, {}, {}
        total = torch.zeros(len(rollout.completions), dtype=torch.float32)
        for i, (config, channel) in enumerate(zip(self.configs, self.channels)):
            out = outs[i]
            name = channel.name
            scores[name] = torch.tensor(out.scores, dtype=torch.float32)
            if name in self.corrections:
                scores[name] = self.corrections[name](scores[name], name).float()
            if out.passed is not None:
                passed[name] = torch.tensor(out.passed, dtype=torch.bool)
            errors[name] = out.errors
            if out.timeouts is not None:
                timeouts[name] = out.timeouts
            if out.steps is not None:  # per-step rewards go to the token level, not into the sum
                process[name] = out.steps.weighted(config.weight)
                continue
            total += config.weight * scores[name]
        if getattr(rollout, "env_rewards", None) is not None:  # episodes: per-turn rewards add to the outcome
            scores[ENVIRONMENT_CHANNEL] = torch.tensor(rollout.env_rewards, dtype=torch.float32)
            total += scores[ENVIRONMENT_CHANNEL]
        return ScoredBatch(rollout=rollout, rows=list(rows), channel_scores=scores, channel_passed=passed,
                           channel_errors=errors, rewards=total, group_size=group_size,
                           channel_timeouts=timeouts, process=process)

    def close(self) -> None:
        if self._background is not None:
            self._background.shutdown(wait=True)
        for channel in self.channels:
            if hasattr(channel, "close"):
                channel.close()


def _timed(fn, *args):
    import time

    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start
