"""Progress display: a bar per stage with a live line of key metrics.

On a terminal this is a rich progress bar; elsewhere (CI, pipes, log files) it prints a plain
line at most every `interval_s` seconds so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def format_metrics(metrics: dict[str, Any], keys: tuple[str, ...] = (), limit: int = 6) -> str:
    """`loss=0.412 reward=0.81 ...`: the stage's key metrics first, then others, numbers only."""
    ordered = [k for k in keys if k in metrics] + [k for k in metrics if k not in keys]
    parts = []
    for key in ordered:
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or key in ("step", "time", "epoch"):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        if len(parts) == limit:
            break
    return " ".join(parts)


class StageProgress:
    """`set_total(n)`, `update(step, metrics)`, `close()` for one stage."""

    def __init__(self, stage: str, key_metrics: tuple[str, ...] = (), console: Console | None = None,
                 interval_s: float = 10.0, enabled: bool = True):
        self.stage = stage
        self.key_metrics = key_metrics
        self.console = console or Console(file=sys.stderr)
        self.interval_s = interval_s
        self.enabled = enabled
        self.total: int | None = None
        self.metrics: dict[str, Any] = {}
        self._progress: Progress | None = None
        self._task = None
        self._last_print = 0.0
        self._step = 0

    def set_total(self, total: int | None) -> None:
        self.total = total
        if not self.enabled:
            return
        if self.console.is_terminal and self._progress is None:
            self._progress = Progress(
                TextColumn(f"[bold]{self.stage}[/bold]"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[line]}"),
                console=self.console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.stage, total=total, line="")
        elif self._task is not None and self._progress is not None:
            self._progress.update(self._task, total=total)

    def update(self, step: int, metrics: dict[str, Any] | None = None) -> None:
        self._step = step
        if metrics:
            self.metrics.update(metrics)
        if not self.enabled:
            return
        line = format_metrics(self.metrics, self.key_metrics)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step, line=line)
        elif time.time() - self._last_print >= self.interval_s:
            self._last_print = time.time()
            total = f"/{self.total}" if self.total else ""
            self.console.print(f"[{self.stage}] step {step}{total} {line}", highlight=False, markup=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self.enabled and self._step:
            total = f"/{self.total}" if self.total else ""
            self.console.print(f"[{self.stage}] done at step {self._step}{total} {format_metrics(self.metrics, self.key_metrics)}", highlight=False, markup=False)
