"""Measure a verifier against labelled completions (``posttrain verify``).

Each labelled row holds a ``completion``, the sample's columns, and a boolean ``label`` (is the
completion correct?) or ``expected`` (a reference verdict: another verifier's, a grader's), whose
agreement with the verifier is reported. The verifier's verdict is ``result.passed`` when it gives one, else
``score >= threshold``. Failed items (errors, timeouts) get the fallback score like in training,
so they show up both in the confusion matrix and in the error counts.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.errors import DataError
from posttrain.verification.callable import LoadedVerifier
from posttrain.verification.pool import VerifierPool

COMPLETION_KEY, LABEL_KEY, EXPECTED_KEY = "completion", "label", "expected"


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class VerifierEvaluation:
    """Confusion counts (positive = "correct completion") and derived rates.

    Rates with an empty denominator are None (e.g. ``fp_rate`` when no row is labelled False).
    """

    verifier: str
    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    errors: int
    timeouts: int
    duration_s: float
    items_per_s: float
    threshold: float
    mistakes: list[dict[str, Any]] = field(default_factory=list)
    label_key: str = LABEL_KEY  # the column compared with: label, expected, or one the caller named

    @property
    def confusion_matrix(self) -> list[list[int]]:
        """``[[tn, fp], [fn, tp]]``: rows are labels (False, True), columns are verdicts."""
        return [[self.tn, self.fp], [self.fn, self.tp]]

    @property
    def fp_rate(self) -> float | None:
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def fn_rate(self) -> float | None:
        return _ratio(self.fn, self.fn + self.tp)

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.tp + self.tn, self.n)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``posttrain verify --json`` prints)."""
        return {
            "verifier": self.verifier, "n": self.n,
            "confusion_matrix": {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn},
            "fp_rate": self.fp_rate, "fn_rate": self.fn_rate, "precision": self.precision,
            "recall": self.recall, "accuracy": self.accuracy, "errors": self.errors,
            "timeouts": self.timeouts, "duration_s": self.duration_s,
            "items_per_s": self.items_per_s, "threshold": self.threshold,
            "label_key": self.label_key, "agreement": self.accuracy, "mistakes": self.mistakes,
        }


def _label(value: Any, where: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise DataError(f"{where}: '{key}' is {value!r}; expected true/false (or 1/0)")


def label_column(rows: list[Mapping[str, Any]], requested: str | None = None) -> str:
    """The column verdicts are compared with: ``requested``, else ``label``, else ``expected``."""
    if requested:
        return requested
    first = rows[0] if rows and isinstance(rows[0], Mapping) else {}
    return EXPECTED_KEY if LABEL_KEY not in first and EXPECTED_KEY in first else LABEL_KEY


def _split_rows(rows: list[Mapping[str, Any]], source: str, label_key: str):
    completions, labels, names = [], [], []
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        if not isinstance(row, Mapping):
            raise DataError(f"{where} is {type(row).__name__}; expected an object")
        for key in (COMPLETION_KEY, label_key):
            if key not in row:
                raise DataError(f"{where} lacks '{key}'; expected keys '{COMPLETION_KEY}', "
                                f"'{label_key}' (or '{EXPECTED_KEY}', a reference verdict) and the verifier's columns")
        completions.append(row[COMPLETION_KEY])
        labels.append(_label(row[label_key], where, label_key))
        names.extend(k for k in row if k not in (COMPLETION_KEY, label_key) and k not in names)
    columns = {k: [row.get(k) for row in rows] for k in names}
    return completions, labels, columns


def evaluate_verifier(verifier: LoadedVerifier, labelled_rows: Iterable[Mapping[str, Any]], *,
                      threshold: float = 0.5, timeout_s: float = 10.0, workers: int = 4,
                      source: str = "labelled rows", max_mistakes: int = 10,
                      label_key: str | None = None) -> VerifierEvaluation:
    """Score labelled rows and compare verdicts with labels; never stops on verifier errors.

    >>> from posttrain.verification import load_verifier
    >>> ev = evaluate_verifier(load_verifier("exact"), [
    ...     {"completion": "4", "answer": "4", "label": True},
    ...     {"completion": "5", "answer": "4", "label": True}])
    >>> ev.tp, ev.fn, ev.recall
    (1, 1, 0.5)
    """
    rows = list(labelled_rows)
    if not rows:
        raise DataError(f"{source} is empty; expected labelled rows")
    label_key = label_column(rows, label_key)
    completions, labels, columns = _split_rows(rows, source, label_key)
    verifier.check_columns(list(columns), source)
    # max_error_rate=1: an evaluation reports failures instead of stopping on them.
    with VerifierPool(verifier, timeout_s, workers, max_error_rate=1.0) as pool:
        scored = pool.run(completions, columns)
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    mistakes = []
    for i, (label, outcome) in enumerate(zip(labels, scored.outcomes)):
        result = outcome.result
        verdict = result.passed if result is not None and result.passed is not None \
            else outcome.score >= threshold
        counts[("t" if verdict == label else "f") + ("p" if verdict else "n")] += 1
        if verdict != label and len(mistakes) < max_mistakes:
            mistakes.append({"row": i + 1, "label": label, "verdict": verdict,
                             "score": outcome.score, "status": outcome.status,
                             "extracted": result.extracted if result else None,
                             "reason": (result.reason if result else None) or outcome.error})
    stats = scored.stats
    return VerifierEvaluation(verifier.name, len(rows), **counts, errors=stats.errors,
                              timeouts=stats.timeouts, duration_s=stats.duration_s,
                              items_per_s=stats.items_per_s, threshold=threshold,
                              mistakes=mistakes, label_key=label_key)


def read_labelled_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file of labelled rows; DataError names the file and line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labelled data {path} does not exist; expected a JSONL file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path} line {lineno}: expected a JSON object, got "
                                f"{type(row).__name__}")
            rows.append(row)
    return rows
