"""Score batches with a verifier: per-item timeouts, a worker pool, and loud error accounting.

Every item gets an :class:`ItemOutcome`. A verifier that raises, times out, or returns a bad
score (NaN, outside [0, 1], wrong type) gives that item ``fallback_score`` and is counted in
``errors``/``timeouts``; the first failure of each batch is logged as a warning with its input.
When more than ``max_error_rate`` of a batch fails (judged once at least ``min_items`` outcomes
are known; small batches are pooled with the previous ones) the pool raises VerifierError
naming the verifier, the exception and one offending input, so a broken verifier stops the run
instead of silently training on fallback scores.

>>> from posttrain.verification import load_verifier
>>> with VerifierPool(load_verifier("exact"), timeout_s=5, workers=2) as pool:
...     scored = pool.run(["4", "5"], {"answer": ["4", "4"]})
>>> scored.scores, scored.stats.errors
([1.0, 0.0], 0)
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from threading import Lock
from typing import Any, get_args

from posttrain.errors import VerifierError
from posttrain.verification.callable import LoadedVerifier
from posttrain.verification.contract import ExecutorChoice, VerifierResult, coerce_result
from posttrain.verification.processes import ProcessWorkers, recipe_for
from posttrain.verification.workers import AbandoningWorkers, StuckWorkersError, Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemOutcome:
    """What happened to one item. ``status`` is "ok", "error" or "timeout"."""

    score: float
    status: str
    result: VerifierResult | None = None
    error: str | None = None
    duration_s: float = 0.0


@dataclass(frozen=True)
class VerificationStats:
    """Counts for one batch (or a pool's lifetime): ``items_per_s`` is n / wall time."""

    n: int
    errors: int
    timeouts: int
    mean_score: float
    duration_s: float
    items_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScoredBatch:
    """Scores aligned with the input completions, plus per-item outcomes and stats."""

    scores: list[float]
    outcomes: list[ItemOutcome]
    stats: VerificationStats

    @property
    def results(self) -> list[VerifierResult | None]:
        return [o.result for o in self.outcomes]


def _truncate(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...[{len(text) - limit} chars]"


EXECUTOR_CHOICES = get_args(ExecutorChoice)


def resolve_executor(verifier: LoadedVerifier, executor: str, inline: bool = False) -> str:
    """"auto": the verifier's own preference (``@verifier(executor=...)``) where it can apply.

    Processes need a per-item verifier that a fresh interpreter can load by reference; a batched
    one (or an inline batch function) runs in this process.
    """
    if executor not in EXECUTOR_CHOICES:
        raise VerifierError(f"verifier executor={executor!r}; expected one of "
                            f"{', '.join(EXECUTOR_CHOICES)}")
    by_reference = isinstance(verifier.ref, str) and (
        verifier.ref == verifier.spec.name or ":" in verifier.ref)
    if executor == "auto":
        usable = not (verifier.batched or inline) and by_reference
        return verifier.spec.executor if usable else "thread"
    if executor == "process" and (verifier.batched or inline):
        raise VerifierError(f"verifier {verifier.name!r} is batched: it runs on a thread, not "
                            "in worker processes (executor: thread)")
    return executor


class VerifierPool:
    """Runs one loaded verifier over batches; reusable and thread-safe; close() when done."""

    def __init__(self, verifier: LoadedVerifier, timeout_s: float = 10.0, workers: int = 4,
                 fallback_score: float = 0.0, max_error_rate: float = 0.1, min_items: int = 8,
                 inline: bool = False, executor: str = "auto"):
        if not 0.0 <= fallback_score <= 1.0:
            raise VerifierError(f"fallback_score={fallback_score}; expected a float in [0, 1]")
        if not 0.0 <= max_error_rate <= 1.0:
            raise VerifierError(f"max_error_rate={max_error_rate}; expected a float in [0, 1]")
        if timeout_s <= 0:
            raise VerifierError(f"verifier timeout_s={timeout_s}; expected a positive number")
        self.verifier = verifier
        self.timeout_s = float(timeout_s)
        self.fallback_score = float(fallback_score)
        self.max_error_rate = float(max_error_rate)
        self.min_items = max(1, int(min_items))
        # inline: a batched call runs in the caller's thread (batch reward functions: user code
        # such as math-verify's parse arms signal-based timeouts, which only work in the main
        # thread); it is then not interrupted, and a call past timeout_s is reported afterwards.
        self.inline = bool(inline)
        self._workers = AbandoningWorkers(workers, f"verifier-{verifier.name}",
                                          max_abandoned=4 * max(1, int(workers)))
        self.executor = resolve_executor(verifier, executor, self.inline)
        self._processes = ProcessWorkers(workers, f"verifier-{verifier.name}",
                                         recipe_for(verifier)) if self.executor == "process" else None
        self._process_lock = Lock()  # one batch at a time through the worker processes
        self._submitter: ThreadPoolExecutor | None = None
        self._lock = Lock()
        self._recent: deque[bool] = deque(maxlen=self.min_items)  # True = failed
        self._totals = {"n": 0, "errors": 0, "timeouts": 0, "score_sum": 0.0, "duration_s": 0.0}

    def __enter__(self) -> VerifierPool:  # noqa: PYI034 - not meant for subclassing
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the worker threads (calls stuck past their timeout stay abandoned)."""
        if self._submitter is not None:
            self._submitter.shutdown(wait=True)
        self._workers.close()
        if self._processes is not None:
            self._processes.close()

    def submit(self, completions: Sequence[Any], columns: Mapping[str, Sequence[Any]]) -> Future:
        """Start scoring in the background; the Future resolves to :meth:`run`'s ScoredBatch."""
        with self._lock:
            if self._submitter is None:
                self._submitter = ThreadPoolExecutor(2, f"verifier-{self.verifier.name}-submit")
        return self._submitter.submit(self.run, completions, columns)

    def run(self, completions: Sequence[Any], columns: Mapping[str, Sequence[Any]]) -> ScoredBatch:
        """Score ``completions`` (columns map name -> list aligned with them)."""
        columns = {k: list(v) for k, v in columns.items()}
        for key, values in columns.items():
            if len(values) != len(completions):
                raise VerifierError(f"verifier {self.verifier.name!r}: column {key!r} has "
                                    f"{len(values)} values for {len(completions)} completions")
        self.verifier.check_columns(list(columns))
        start = time.monotonic()
        try:
            if self.verifier.batched:
                outcomes = self._run_batched(completions, columns)
            else:
                outcomes = self._run_items(completions, columns)
        except StuckWorkersError as exc:
            raise VerifierError(f"verifier {self.verifier.name!r} hangs: {exc}; every call ran "
                                f"past timeout_s={self.timeout_s}") from exc
        stats = self._account(outcomes, time.monotonic() - start)
        self._check_error_rate(outcomes, completions, columns)
        return ScoredBatch([o.score for o in outcomes], outcomes, stats)

    def _run_items(self, completions, columns) -> list[ItemOutcome]:
        v = self.verifier
        if self._processes is not None:
            items = [(i, completions[i], {k: col[i] for k, col in columns.items()})
                     for i in range(len(completions))]
            with self._process_lock:
                raw = self._processes.run_items(items, self.timeout_s)
            return [self._outcome(raw[i][:2], raw[i][2]) for i in range(len(completions))]

        def call(i: int):
            return lambda: v(completions[i], **{k: col[i] for k, col in columns.items()})

        tasks = [Task(call(i), self.timeout_s) for i in range(len(completions))]
        self._workers.run_tasks(tasks)
        return [self._outcome(t.outcome, t.duration_s) for t in tasks]

    def _run_batched(self, completions, columns) -> list[ItemOutcome]:
        # One call sees the whole batch (a majority vote needs whole groups), so its deadline
        # scales with the batch: timeout_s per item.
        deadline = self.timeout_s * max(1, len(completions))
        if self.inline:
            status, value, duration = self._call_inline(completions, columns, deadline)
        else:
            task = Task(lambda: self.verifier.call_batched_raw(completions, columns), deadline)
            self._workers.run_tasks([task])
            (status, value), duration = task.outcome, task.duration_s
        per_item = duration / max(1, len(completions))
        if status != "ok":
            return [self._outcome((status, value), per_item) for _ in completions]
        return [self._outcome(("ok", raw), per_item) for raw in value]

    def _call_inline(self, completions, columns, deadline: float) -> tuple[str, Any, float]:
        start = time.monotonic()
        try:
            value = self.verifier.call_batched_raw(completions, columns)
        except Exception as exc:  # noqa: BLE001 - the user's code: counted, not fatal
            return "error", exc, time.monotonic() - start
        duration = time.monotonic() - start
        if duration > deadline:
            logger.warning("%r took %.1f s for %d items, past timeout_s x items = %.1f s (it runs inline, "
                           "so it was not interrupted)", self.verifier.name, duration, len(completions), deadline)
        return "ok", value, duration

    def _outcome(self, outcome: tuple[str, Any], duration: float) -> ItemOutcome:
        status, value = outcome
        if status == "timeout":
            return ItemOutcome(self.fallback_score, "timeout",
                               error=f"timed out after {self.timeout_s:g} s", duration_s=duration)
        if status == "ok":
            try:
                result = coerce_result(value, self.verifier.spec.bounded)
            except (TypeError, ValueError) as exc:
                value = exc
            else:
                return ItemOutcome(result.score, "ok", result, duration_s=duration)
        error = value if isinstance(value, str) else f"{type(value).__name__}: {value}"
        return ItemOutcome(self.fallback_score, "error", error=error, duration_s=duration)

    def _account(self, outcomes: list[ItemOutcome], duration: float) -> VerificationStats:
        n = len(outcomes)
        errors = sum(o.status == "error" for o in outcomes)
        timeouts = sum(o.status == "timeout" for o in outcomes)
        score_sum = sum(o.score for o in outcomes)
        with self._lock:
            for key, value in (("n", n), ("errors", errors), ("timeouts", timeouts),
                               ("score_sum", score_sum), ("duration_s", duration)):
                self._totals[key] += value
        return VerificationStats(n, errors, timeouts, score_sum / n if n else 0.0, duration,
                                 n / duration if duration > 0 else 0.0)

    @property
    def totals(self) -> VerificationStats:
        """Stats summed over every batch this pool has scored."""
        with self._lock:
            t = dict(self._totals)
        n, d = t["n"], t["duration_s"]
        return VerificationStats(n, t["errors"], t["timeouts"], t["score_sum"] / n if n else 0.0,
                                 d, n / d if d > 0 else 0.0)

    def _check_error_rate(self, outcomes, completions, columns) -> None:
        failed = [i for i, o in enumerate(outcomes) if o.status != "ok"]
        if not failed:
            with self._lock:
                self._recent.extend(False for _ in outcomes)
            return
        first = failed[0]
        where = _truncate({"completion": completions[first],
                           **{k: v[first] for k, v in columns.items()}})
        logger.warning("verifier %r: %d of %d items failed (first: %s) on input %s",
                       self.verifier.name, len(failed), len(outcomes), outcomes[first].error, where)
        with self._lock:
            self._recent.extend(o.status != "ok" for o in outcomes)
            window = list(self._recent)
        sample = [o.status != "ok" for o in outcomes] if len(outcomes) >= self.min_items else window
        if len(sample) < self.min_items or sum(sample) / len(sample) <= self.max_error_rate:
            return
        errors = sum(o.status == "error" for o in outcomes)
        raise VerifierError(
            f"verifier {self.verifier.name!r} ({self.verifier.spec.origin}) failed on "
            f"{sum(sample)} of the last {len(sample)} items ({errors} errors, "
            f"{len(failed) - errors} timeouts in this batch), above max_error_rate="
            f"{self.max_error_rate:g}. First failure: {outcomes[first].error}; input: {where}")


def run_verifier(verifier: Any, completions: Sequence[Any], columns: Mapping[str, Sequence[Any]],
                 timeout: float = 10.0, workers: int = 4, fallback_score: float = 0.0,
                 max_error_rate: float = 0.1, min_items: int = 8, **options: Any) -> ScoredBatch:
    """Score one batch with a fresh pool; ``verifier`` is a reference or a LoadedVerifier.

    ``options`` are bound to the verifier when it is given by reference.

    >>> run_verifier("exact", ["a", "b"], {"answer": ["a", "a"]}).scores
    [1.0, 0.0]
    """
    if not isinstance(verifier, LoadedVerifier):
        from posttrain.verification.loading import load_verifier

        verifier = load_verifier(verifier, **options)
    elif options:
        raise VerifierError("options can only be bound when the verifier is given by reference")
    with VerifierPool(verifier, timeout, workers, fallback_score, max_error_rate,
                      min_items) as pool:
        return pool.run(completions, columns)
