"""Multi-turn rollouts, token in / token out: a batch of episodes advanced turn by turn.

Every episode keeps one id sequence. A turn's prompt is the episode's ids so far; the model's
sampled ids are appended as they came from the engine (never decoded and re-tokenized), with their
sampler log-probs and mask 1; the environment's answer is rendered by the model's chat template
and its ids appended with mask 0 (context, never trained on). So the ids trained on are exactly the
ids sampled, and where a template renders each message independently of the others, the episode's
ids equal ``apply_chat_template`` of its final messages (the token-oracle test checks that).

The environment's messages are rendered as the template's text *between* an assistant turn's end
(the eos the model emitted) and the next assistant header: :class:`TurnRenderer` measures that on
a probe conversation once, so any template (ChatML, Llama 3, ...) works without a hand-written
suffix.

Limits: ``max_turns`` assistant turns; ``max_tokens_per_turn`` per turn; ``max_episode_tokens``
for everything after the first prompt (the model's and the environment's tokens). An episode that
runs out of tokens mid-turn, or whose environment answer would not fit, ends ``"length"`` (shaped
like an overlong completion); one that uses its ``max_turns`` while the environment still wants
more ends ``"stop"`` and is counted in ``turn_limit``.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from posttrain.agents.environment import StepResult, Toolbox, check_step_result, first_messages
from posttrain.common.seeds import derive_seed
from posttrain.errors import ToolError
from posttrain.rl.rollout.types import RolloutBatch, SamplingConfig, check_batch
from posttrain.verification.workers import AbandoningWorkers, StuckWorkersError, Task

_PROBE_USER, _PROBE_ASSISTANT = "probe question", "probe answer"


class TurnRenderer:
    """Ids of an episode's first prompt and of the environment's messages between turns."""

    def __init__(self, tokenizer, tools: list[dict[str, Any]] | None = None):
        self.tokenizer, self.tools = tokenizer, tools or None
        eos = tokenizer.eos_token
        if not eos:
            raise ValueError("multi-turn episodes need a tokenizer with an eos token (the end of a turn)")
        self.eos_text, self.eos_id = eos, tokenizer.convert_tokens_to_ids(eos)
        self._probe = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ASSISTANT}]
        base = self._render(self._probe, generation_prompt=False)
        end = base.rfind(eos)
        if end < 0 or base.rfind(_PROBE_ASSISTANT) > end:
            raise ValueError("the chat template does not end an assistant turn with the eos token "
                             f"{eos!r}; multi-turn episodes cannot find where a turn ends")
        self._base = base
        self._glue = base[end + len(eos):]  # what the template puts after a turn's eos (e.g. "\n")

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        kwargs = {"tools": self.tools} if self.tools else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  **kwargs)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The first prompt: the messages with the assistant header appended."""
        return self.encode(self._render(messages, generation_prompt=True))

    def continuation_ids(self, messages: list[dict], ended_with_eos: bool) -> list[int]:
        """Ids that follow a finished assistant turn: (its eos, if the model stopped on a stop
        string instead), the template's glue, ``messages`` and the next assistant header."""
        full = self._render(self._probe + list(messages), generation_prompt=True)
        if not full.startswith(self._base):
            raise ValueError("the chat template renders earlier turns differently once more messages follow; "
                             "token-in/token-out episodes need a template that appends")
        text = ("" if ended_with_eos else self.eos_text) + self._glue + full[len(self._base):]
        return self.encode(text)


@dataclass
class EpisodeLimits:
    max_turns: int
    max_tokens_per_turn: int
    max_episode_tokens: int
    step_timeout_s: float = 60.0


@dataclass
class _Episode:
    env: Any
    row: dict[str, Any]
    messages: list[dict[str, Any]]
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    turns: int = 0
    reward: float = 0.0
    info: dict[str, float] = field(default_factory=dict)
    final_text: str = ""
    finish: str = "stop"
    done: bool = False
    turn_limit: bool = False
    env_error: str | None = None
    turn_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each turn in ids
    turn_rewards: list[float] = field(default_factory=list)          # the environment's reward per turn
    observations: list[str] = field(default_factory=lambda: [""])    # what preceded each turn ("" = the prompt)
    given_turns: int = 0                                             # assistant turns in the first prompt

    def add_info(self, info: dict[str, float]) -> None:
        for key, value in info.items():
            self.info[key] = self.info.get(key, 0.0) + float(value)


class EpisodeRunner:
    """Plays environments against a rollout engine (anything with ``generate_ids``)."""

    def __init__(self, make_env: Callable[[], Any], env_name: str, tokenizer, limits: EpisodeLimits,
                 toolbox: Toolbox | None = None, workers: int = 4, max_env_error_rate: float = 0.5):
        self.make_env, self.env_name, self.tokenizer, self.limits = make_env, env_name, tokenizer, limits
        self.toolbox = toolbox
        # the tools the template lists: the recipe's, and those an environment instance binds
        probe = make_env()
        bound = probe.episode_tools() if callable(getattr(probe, "episode_tools", None)) else []
        schemas = (toolbox.schemas if toolbox else []) + [t.schema for t in bound]
        self.renderer = TurnRenderer(tokenizer, schemas or None)
        self._workers = AbandoningWorkers(workers, "posttrain-env", max_abandoned=max(4, 2 * workers))
        self.max_env_error_rate = max_env_error_rate
        self.calls = {"reset()": [0, 0], "step()": [0, 0]}  # [failed, made] per environment call
        self.context_limit: int | None = None  # the engine's of the run under way

    def close(self) -> None:
        self._workers.close()
        if self.toolbox is not None and self.toolbox.runner is not None:
            self.toolbox.runner.close()

    def run(self, engine, rows: Sequence[dict[str, Any]], sampling: SamplingConfig) -> RolloutBatch:
        """``sampling.n`` episodes per row, grouped by row (the RolloutBatch contract), with
        ``completion_mask``, ``env_rewards`` and ``episodes`` filled."""
        start = time.perf_counter()
        episodes: list[_Episode] = []
        self.context_limit = getattr(engine, "context_limit", None)  # vLLM's max_model_len, where it has one
        try:
            self._reset([row for row in rows for _ in range(sampling.n)], episodes)
            for turn in range(self.limits.max_turns):
                active = [e for e in episodes if not e.done]
                if not active:
                    break
                self._generate_turn(engine, active, sampling, turn)
                stepping = [e for e in active if not e.done]
                self._step(stepping)
                for episode in stepping:
                    if not episode.done and turn + 1 == self.limits.max_turns:
                        episode.done = episode.turn_limit = True
        finally:
            for episode in episodes:
                if not _close(episode.env):
                    episode.add_info({"close_errors": 1.0})
        batch = self._batch(episodes, sampling.n, len(rows))
        batch.generation_seconds = time.perf_counter() - start
        return check_batch(batch, len(rows), sampling.n)

    def _reset(self, rows: list[dict[str, Any]], episodes: list[_Episode]) -> None:
        """Appends one episode per row to ``episodes`` (each as soon as its environment exists, to be
        closed whatever happens). The resets run concurrently, each within step_timeout_s; one that
        raises, hangs or returns no messages ends its episode before the first turn, on the row's
        own prompt, counted as an environment error (a ToolError, the stage-stopping kind,
        propagates)."""
        made = []
        for row in rows:
            env = self.make_env()
            made.append(_Episode(env, dict(row), [], []))
            episodes.append(made[-1])
            if self.toolbox is not None:
                env.toolbox = self.toolbox
            env.step_timeout_s = self.limits.step_timeout_s
        tasks = [Task(lambda e=e: self._first_prompt(first_messages(e.env.reset(dict(e.row)), self.env_name)),
                      self.limits.step_timeout_s) for e in made]
        self._run_env_tasks(tasks, "reset()")
        self.calls["reset()"][1] += len(made)
        for episode, task in zip(made, tasks):
            kind, value = task.outcome
            if kind == "ok":
                episode.messages, episode.prompt_ids = value
            else:
                episode.messages, episode.prompt_ids = self._row_prompt(episode.row)
                self._env_failed(episode, "reset()", _failure(kind, value, self.limits.step_timeout_s),
                                 f"for the row {str(episode.row)[:200]}")
            episode.given_turns = sum(m.get("role") == "assistant" for m in episode.messages)

    def _first_prompt(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
        return messages, self.renderer.prompt_ids(messages)

    def _row_prompt(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
        """The row's own prompt, for an episode whose reset failed (an empty user turn when the row
        has no prompt that renders)."""
        try:
            return self._first_prompt(first_messages(row.get("prompt"), "row"))
        except Exception:  # noqa: BLE001 - any prompt will do: the episode has no turn to train on
            return self._first_prompt([{"role": "user", "content": ""}])

    def _context_room(self, episode: _Episode, more: int = 0) -> float:
        """Tokens left in the engine's context once ``more`` are added (inf without a limit)."""
        if self.context_limit is None:
            return math.inf
        return self.context_limit - len(episode.prompt_ids) - len(episode.ids) - more

    def _run_env_tasks(self, tasks: list[Task], what: str) -> None:
        """The tasks on the environment workers; ToolError when calls keep hanging past the timeout."""
        try:
            self._workers.run_tasks(tasks)
        except StuckWorkersError as exc:
            raise ToolError(f"environment {self.env_name!r}: {exc}: {what} hangs past "
                            f"{self.limits.step_timeout_s:g} s and keeps doing so") from None
        for task in tasks:
            kind, value = task.outcome
            if kind == "error" and isinstance(value, ToolError):
                raise value

    def _generate_turn(self, engine, active: list[_Episode], sampling: SamplingConfig, turn: int) -> None:
        """One turn of every active episode, in one engine call. An episode with no room left in the
        engine's context (``engine.context_limit``, where it has one: a vLLM engine's
        max_model_len) ends ``"length"`` before it, as one out of ``max_episode_tokens`` does."""
        for e in active:
            if self._context_room(e) <= 0:  # the first prompt filled it
                e.done, e.finish = True, "length"
                e.add_info({"context_full": 1.0})
        active = [e for e in active if not e.done]
        if not active:
            return
        budgets = [min(self.limits.max_episode_tokens - len(e.ids), self._context_room(e)) for e in active]
        width = max(1, min(self.limits.max_tokens_per_turn, max(budgets)))
        seed = sampling.seed if sampling.seed is None or turn == 0 else derive_seed(sampling.seed, "sampling", turn)
        turn_sampling = sampling.model_copy(update={"n": 1, "max_tokens": width, "seed": seed})
        out = engine.generate_ids([e.prompt_ids + e.ids for e in active], turn_sampling)
        for i, (episode, budget) in enumerate(zip(active, budgets)):
            ids, logprobs, reason = out.completion_ids[i], out.sampler_logprobs[i], out.finish_reasons[i]
            if len(ids) > budget:  # the turn ran past this episode's remaining budget
                ids, logprobs, reason = ids[:max(budget, 0)], logprobs[:max(budget, 0)], "length"
            episode.turn_spans.append((len(episode.ids), len(episode.ids) + len(ids)))
            episode.ids += ids
            episode.mask += [1] * len(ids)
            episode.logprobs += logprobs
            episode.turns += 1
            episode.final_text = self.tokenizer.decode(ids, skip_special_tokens=True)
            episode.messages.append({"role": "assistant", "content": episode.final_text})
            if reason == "length":
                episode.done, episode.finish = True, "length"

    def _step(self, episodes: list[_Episode]) -> None:
        """Every environment's answer to its turn, concurrently, each within step_timeout_s."""
        tasks = [Task(lambda e=e: check_step_result(e.env.step(e.final_text), self.env_name),
                      self.limits.step_timeout_s) for e in episodes]
        self._run_env_tasks(tasks, "step()")
        self.calls["step()"][1] += len(episodes)
        for episode, task in zip(episodes, tasks):
            kind, value = task.outcome
            if kind != "ok":
                self._env_failed(episode, "step()", _failure(kind, value, self.limits.step_timeout_s),
                                 f"after the turn {episode.final_text[:200]!r}")
                continue
            self._apply(episode, value)

    def _env_failed(self, episode: _Episode, call: str, failure: str, where: str) -> None:
        """Ends the episode as an environment error (``call``, ``reset()`` or ``step()``, failed:
        ``failure``; ``where`` names the row or turn). ToolError once more than
        max_env_error_rate of that call's runs (8 at least) failed."""
        failed_and_made = self.calls[call]
        failed_and_made[0] += 1
        episode.done, episode.env_error = True, failure if call == "step()" else f"{call} {failure}"
        episode.add_info({"env_errors": 1.0})
        failed, made = failed_and_made
        if made >= 8 and failed > self.max_env_error_rate * made:
            raise ToolError(f"environment {self.env_name!r}: {failed} of {made} {call} calls failed, "
                            f"more than {self.max_env_error_rate:g}. Example: {call} {failure} {where}")

    def _apply(self, episode: _Episode, result: StepResult) -> None:
        episode.reward += float(result.reward)
        episode.turn_rewards.append(float(result.reward))
        episode.add_info(result.info)
        if result.done or not result.messages:
            episode.done = True
            return
        ended_with_eos = bool(episode.ids) and episode.ids[-1] == self.renderer.eos_id
        try:
            more = self.renderer.continuation_ids(result.messages, ended_with_eos)
        except Exception as exc:  # noqa: BLE001 - a message the template cannot render: the episode ends, counted
            self._env_failed(episode, "step()", f"returned messages the chat template cannot render ({exc})",
                             f"after the turn {episode.final_text[:200]!r}")
            return
        if len(episode.ids) + len(more) >= self.limits.max_episode_tokens:
            episode.done, episode.finish = True, "length"  # no room for the answer and another turn
            return
        if self._context_room(episode, len(more)) <= 0:
            episode.done, episode.finish = True, "length"  # the same, in the engine's context
            episode.add_info({"context_full": 1.0})
            return
        episode.ids += more
        episode.mask += [0] * len(more)
        episode.logprobs += [None] * len(more)
        episode.messages.extend(result.messages)
        episode.observations.append(json.dumps(result.messages, sort_keys=True, default=str))

    def _batch(self, episodes: list[_Episode], n: int, num_rows: int) -> RolloutBatch:
        batch = RolloutBatch(
            prompt_ids=[e.prompt_ids for e in episodes], completion_ids=[e.ids for e in episodes],
            sampler_logprobs=[e.logprobs for e in episodes], finish_reasons=[e.finish for e in episodes],
            completions=[e.final_text for e in episodes], prompt_index=[i // n for i in range(len(episodes))],
            metadata={"engine": "episodes", "environment": self.env_name},
            completion_mask=[e.mask for e in episodes], env_rewards=[e.reward for e in episodes],
            episodes=[episode_record(e) for e in episodes])
        return batch


def _failure(kind: str, value: Any, timeout_s: float) -> str:
    """How an environment call failed, as the episode's env_error says it."""
    return f"did not answer within {timeout_s:g} s" if kind == "timeout" else f"raised {type(value).__name__}: {value}"


def _close(env: Any) -> bool:
    """The environment's optional ``close()``: its episode is over. False when it raised (counted by
    the caller; one environment's failing close must not leave the others open)."""
    close = getattr(env, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - counted in the episode's close_errors
            return False
    return True


def episode_record(episode: _Episode) -> dict[str, Any]:
    """What the metrics and transcripts keep of an episode. Each step (generated turn) keeps its
    token span, reward, what preceded it, and ``turn``: the assistant turns given in the first prompt
    plus the model's turns before it (a turn after a given wrong answer is turn 1; assistant
    messages an environment's step() adds are not counted)."""
    rewards = episode.turn_rewards + [0.0] * (len(episode.turn_spans) - len(episode.turn_rewards))
    steps = [{"span": list(span), "reward": reward, "observation": observation, "turn": episode.given_turns + k}
             for k, (span, reward, observation) in enumerate(zip(episode.turn_spans, rewards, episode.observations))]
    return {"turns": episode.turns, "messages": episode.messages, "reward": episode.reward,
            "truncated": episode.finish == "length", "turn_limit": episode.turn_limit,
            "env_error": episode.env_error, "info": dict(episode.info), "steps": steps}


def episode_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means per episode: turns, tool calls (all and per tool), tool errors and their rate, tool
    seconds, truncated and turn-limited episodes, environment errors and reward, and every other
    count an environment reported in its step info; where it reports a count ``X`` and ``X_correct``
    (the feedback environment's ``attempt_<k>``), also ``X_accuracy``: correct per X made."""
    if not records:
        return {}
    n = len(records)
    out = {"episode/turns": sum(r["turns"] for r in records) / n,
           "episode/truncated": sum(r["truncated"] for r in records) / n,
           "episode/turn_limit": sum(r["turn_limit"] for r in records) / n,
           "episode/env_reward": sum(r["reward"] for r in records) / n}
    keys = sorted({k for r in records for k in r["info"]} | {"tool_calls", "tool_errors", "env_errors"})
    for key in keys:
        out[f"episode/{key}"] = sum(r["info"].get(key, 0.0) for r in records) / n
    calls = sum(r["info"].get("tool_calls", 0.0) for r in records)
    out["episode/tool_error_rate"] = sum(r["info"].get("tool_errors", 0.0) for r in records) / calls if calls else 0.0
    for key in keys:  # a count X with its X_correct: the accuracy of X (feedback's attempt_<k>)
        if f"{key}_correct" in keys and out[f"episode/{key}"]:
            out[f"episode/{key}_accuracy"] = out[f"episode/{key}_correct"] / out[f"episode/{key}"]
    return out
