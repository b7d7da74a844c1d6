"""PNG plots of a stage's metric curves (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_SKIP = {"step", "time", "epoch", "learning_rate", "grad_norm"}


def numeric_series(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} for every numeric metric seen at least twice."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in _SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(record["step"])
            values.append(float(value))
    return {k: v for k, v in series.items() if len(v[0]) >= 2}


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start).

    >>> moving_average([1.0, 3.0, 5.0, 7.0], 2)
    [1.0, 2.0, 4.0, 6.0]
    """
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def panel_keys(series: dict[str, tuple[list[int], list[float]]], key_metrics: tuple[str, ...],
               max_panels: int) -> list[str]:
    """The metrics a stage figure shows: its key metrics, then the other metrics that change.

    A flat line (e.g. GRPO's max advantage with binary rewards and a fixed group size) says nothing
    a table would not, so it does not take a panel unless it is a key metric.
    """
    varying = sorted(k for k, (_, values) in series.items() if k not in key_metrics and max(values) > min(values))
    return ([k for k in key_metrics if k in series] + varying)[:max_panels]


def plot_stage(records: list[dict[str, Any]], key_metrics: tuple[str, ...], title: str, path: Path,
               max_panels: int = 6) -> Path | None:
    """One figure, one panel per metric (key metrics first); None when there is nothing to plot."""
    series = numeric_series(records)
    keys = panel_keys(series, key_metrics, max_panels)
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = series[key]
        if len(steps) >= 20:  # noisy per-step RL metrics: the raw curve faint, its moving average on top
            ax.plot(steps, values, alpha=0.3)
            ax.plot(steps, moving_average(values, max(5, len(values) // 10)), label="moving average")
        else:
            ax.plot(steps, values, marker="." if len(steps) < 40 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_across_stages(values: dict[str, dict[str, float]], metric: str, path: Path) -> Path | None:
    """Bar chart of one summary metric (e.g. held-out accuracy) after each stage that reports it."""
    stages = [s for s, v in values.items() if metric in v]
    if not stages:
        return None
    fig, ax = plt.subplots(figsize=(1.2 * len(stages) + 2.5, 3.0))
    ax.bar(stages, [values[s][metric] for s in stages])
    ax.set_title(metric)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
