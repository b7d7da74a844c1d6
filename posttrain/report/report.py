"""`report.md` in the run dir: stage table, per-stage curves, metrics compared across stages."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from posttrain.report.metrics import read_metrics
from posttrain.report.plots import plot_across_stages, plot_stage


class StageOutcome(Protocol):
    """What the report reads of a stage's outcome (the runner's StageOutcome has it); a protocol,
    so this low layer never imports the runner above it."""

    name: str
    kind: str
    status: str
    seconds: float
    summary: dict[str, Any]


class ResolvedRecipe(Protocol):
    """What the report reads of a resolved recipe (posttrain.recipe.resolve.ResolvedRecipe)."""

    name: str
    run_dir: Path
    source: str

#: Summary metrics that stages share, charted across stages when two or more report them.
ACROSS_STAGE_METRICS = ("eval/accuracy", "eval/pass@1", "eval_loss", "eval/reward_accuracy", "eval/tool_calls")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_rows(outcomes: list[StageOutcome], keys_per_stage: int = 4) -> list[list[str]]:
    """[stage, kind, status, seconds, key metrics] rows, shared by report.md and the terminal table."""
    rows = []
    for o in outcomes:
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in list(o.summary.items())[:keys_per_stage])
        rows.append([o.name, o.kind, o.status, f"{o.seconds:.1f}", metrics])
    return rows


def time_split_lines(records: list[dict[str, Any]]) -> list[str]:
    """An RL stage's mean seconds per step by phase (the trainer's ``time/*``; in server mode also
    the rollout workers' busy and idle time) and, when it trained asynchronously, its staleness."""
    steps = [r for r in records if "time/step" in r]
    if not steps:
        return []

    def mean(key: str) -> float:
        values = [r[key] for r in steps if key in r]
        return sum(values) / len(values)

    phases = sorted({k for r in steps for k in r if k.startswith("time/") and k != "time/step"})
    split = ", ".join(f"{k.removeprefix('time/')} {mean(k):.2f}" for k in phases)
    lines = [f"Time per step (mean s): step {mean('time/step'):.2f}; trainer: {split}."]
    if any("rollout/worker_busy_s" in r for r in steps):
        lines.append(f"Rollout workers (summed over workers): busy {mean('rollout/worker_busy_s'):.2f}, "
                     f"idle {mean('rollout/worker_idle_s'):.2f}; restarts {sum(r.get('rollout/worker_restarts', 0) for r in steps):.0f}.")
    if any("rollout/staleness" in r for r in steps):
        lines.append(f"Staleness (updates between sampling and training): mean {mean('rollout/staleness'):.2f}, "
                     f"max {max(r['rollout/staleness'] for r in steps if 'rollout/staleness' in r):.0f}; dropped batches "
                     f"{sum(r.get('rollout/dropped_batches', 0) for r in steps):.0f}.")
    return [*lines, ""]


def write_report(recipe: ResolvedRecipe, outcomes: list[StageOutcome]) -> Path:
    run_dir = recipe.run_dir
    lines = [f"# {recipe.name}", "", f"Recipe: `{recipe.source}`  ", f"Written: {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
             "| stage | kind | status | seconds | key metrics |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(outcomes)]
    summaries = {o.name: o.summary for o in outcomes if o.summary}
    across = [m for m in ACROSS_STAGE_METRICS if sum(m in s for s in summaries.values()) >= 2]
    if across:
        lines += ["", "## Across stages", ""]
        for metric in across:
            plot = plot_across_stages(summaries, metric, run_dir / "plots" / f"across_{metric.replace('/', '_')}.png")
            values = ", ".join(f"{s}: {_fmt(v[metric])}" for s, v in summaries.items() if metric in v)
            lines += [f"**{metric}**: {values}", ""]
            if plot:
                lines += [f"![{metric}]({plot.relative_to(run_dir)})", ""]
    stage_by_name = {s.name: s for s in recipe.stages}
    for o in outcomes:
        stage_dir = run_dir / o.name if o.status != "failed" else run_dir / ".work" / f"{o.name}-{o.hash[:12]}"
        records = read_metrics(stage_dir / "metrics.jsonl")
        if not records:
            continue
        key_metrics = type(stage_by_name[o.name].config).key_metrics
        plot = plot_stage(records, key_metrics, f"{o.name} ({o.kind})", run_dir / "plots" / f"{o.name}.png")
        lines += ["", f"## {o.name} ({o.kind})", "", f"{len(records)} logged steps; status {o.status}; {o.seconds:.1f} s.", ""]
        lines += time_split_lines(records)
        if plot:
            lines += [f"![{o.name}]({plot.relative_to(run_dir)})"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
