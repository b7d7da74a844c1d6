"""Generate with a rollout engine, score with a verifier, summarise, and save per-sample outputs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.evaluation.metrics import summarize_groups


def _passed(outcome) -> bool:
    result = outcome.result
    if result is not None and result.passed is not None:
        return bool(result.passed)
    return outcome.score >= 1.0


def _score(engine, prompts, columns, sampling, pool, episodes=None) -> tuple[Any, Any]:
    if episodes is None:
        batch = engine.generate(prompts, sampling)
    else:
        rows = [{"prompt": p, **{name: values[i] for name, values in columns.items()}} for i, p in enumerate(prompts)]
        batch = episodes.run(engine, rows, sampling)
    expanded = {name: [values[i] for i in batch.prompt_index] for name, values in columns.items()}
    return batch, pool.run(batch.completions, expanded)


def _greedy_summary(batch, passed: list[bool], columns: dict[str, list], breakdown: str | None) -> dict[str, float]:
    """Accuracy, length and truncation (and, for episodes, every per-episode mean of
    ``episode_metrics``: turns, tool calls, the environment's counts), also split by the
    ``breakdown`` column's values (greedy: one completion per prompt)."""
    from posttrain.agents.episodes import episode_metrics

    def part(rows: list[int], suffix: str) -> dict[str, float]:
        out = {f"eval/accuracy{suffix}": sum(passed[i] for i in rows) / len(rows)}
        if batch.episodes is not None:
            means = episode_metrics([batch.episodes[i] for i in rows])
            # every per-episode mean, the environment's own counts included (feedback: attempt_2_accuracy)
            out.update({f"eval/{k.removeprefix('episode/')}{suffix}": v for k, v in means.items()})
        return out

    every = list(range(len(passed)))
    summary = part(every, "")
    summary["eval/mean_length"] = sum(len(c) for c in batch.completion_ids) / len(batch.completion_ids)
    summary["eval/truncated"] = sum(r == "length" for r in batch.finish_reasons) / len(passed)
    if breakdown:
        values = [str(columns[breakdown][i]) for i in batch.prompt_index]
        for value in sorted(set(values)):
            summary.update(part([i for i in every if values[i] == value], f"/{value}"))
    return summary


def evaluate_model(engine, pool, prompts: list, columns: dict[str, list], *, greedy: bool = True,
                   samples: int = 0, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 64,
                   seed: int = 0, ks: tuple[int, ...] = (1,), samples_path: Path | None = None,
                   episodes=None, breakdown: str | None = None) -> dict[str, float]:
    """Greedy accuracy and/or sampled pass@k of the engine's model on `prompts`.

    Returns {"eval/accuracy", "eval/mean_length", "eval/pass@K"...}; writes one JSON line per
    generated completion to `samples_path` (mode, prompt index, completion, score, passed; for
    episodes also the transcript, turns and tool calls). ``episodes``: an EpisodeRunner that plays
    each prompt as a multi-turn episode (posttrain.agents); ``breakdown``: a column splitting the
    greedy accuracy (eval/accuracy/<value>).
    """
    from posttrain.rl.rollout import SamplingConfig

    summary: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    runs = []
    if greedy:
        runs.append(("greedy", SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens, seed=seed)))
    if samples:
        runs.append(("sampled", SamplingConfig(n=samples, temperature=temperature, top_p=top_p,
                                               max_tokens=max_tokens, seed=seed)))
    for mode, sampling in runs:
        batch, scored = _score(engine, prompts, columns, sampling, pool, episodes)
        passed = [_passed(o) for o in scored.outcomes]
        if mode == "greedy":
            summary.update(_greedy_summary(batch, passed, columns, breakdown))
        else:
            summary.update({f"eval/{k}": v for k, v in summarize_groups(passed, sampling.n, ks).items()})
        summary[f"eval/{mode}_verifier_errors"] = scored.stats.errors + scored.stats.timeouts
        for i, outcome in enumerate(scored.outcomes):
            row = {"mode": mode, "prompt_index": batch.prompt_index[i], "completion": batch.completions[i],
                   "finish_reason": batch.finish_reasons[i], "score": outcome.score, "passed": passed[i],
                   "status": outcome.status}
            if batch.episodes is not None:
                record = batch.episodes[i]
                row.update(turns=record["turns"], tool_calls=record["info"].get("tool_calls", 0.0),
                           info=record["info"], transcript=record["messages"])
            rows.append(row)
    if samples_path is not None:
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        samples_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {k: round(v, 6) for k, v in summary.items()}
