"""Per-stage metrics as JSON lines: one object per logged step, `{"step": int, "time": float, ...}`."""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from posttrain.report.trackers import MetricSink

logger = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Appends metrics to `path`; calls `listeners` (e.g. the progress line) on every record and
    hands its numbers to `sinks` (experiment trackers, :mod:`posttrain.report.trackers`)."""

    def __init__(self, path: Path, enabled: bool = True, sinks: list[MetricSink] | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.listeners: list[Callable[[int, dict[str, Any]], None]] = []
        self.sinks: list[MetricSink] = list(sinks or [])
        self.last: dict[str, Any] = {}
        self._start = time.time()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {k: _clean(v) for k, v in metrics.items() if isinstance(_clean(v), (int, float, str, type(None)))}
        self.last.update({k: v for k, v in record.items() if v is not None})
        for listener in self.listeners:
            listener(step, record)
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "time": round(time.time() - self._start, 3), **record}) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in list(self.sinks):
            self._call(sink, "write", int(step), numbers)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (used when resuming from a checkpoint taken at `step`)."""
        for sink in list(self.sinks):
            self._call(sink, "truncate_after", step)
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self, failed: bool = False) -> None:
        """Finish every tracker run (flushes event files, ends the W&B / MLflow run, marked failed
        when the stage failed)."""
        for sink in list(self.sinks):
            self._call(sink, "close", failed)

    def _call(self, sink: MetricSink, method: str, *args: Any) -> None:
        """A tracker that fails (a W&B or MLflow error) is dropped with a warning: it must not stop
        the training it observes, nor hide the stage's own error; metrics.jsonl keeps the record."""
        try:
            getattr(sink, method)(*args)
        except Exception as err:  # noqa: BLE001 - any tracker failure
            logger.warning("tracker %s failed in %s (%s: %s); it gets no more metrics this stage, "
                           "metrics.jsonl keeps them", type(sink).__name__, method, type(err).__name__, err)
            self.sinks.remove(sink)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (an absent file is an empty list)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
