"""benchmarks/verifiers.py: its batches carry the right expected verdicts, a wrong verdict stops
the run, and the table/header say what the README promises (median, range, load note)."""
from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

import pytest

from posttrain.verification import VerifierPool, load_verifier

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "verifiers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_verifiers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_numeric_and_code_batches_score_as_expected(bench):
    """Two workers; run_once raises if any verdict differs from the generated label."""
    numeric = next(c for c in bench.CASES if c.name == "numeric")
    rates = bench.measure(numeric, (1, 2), reps=2, items=40, seed=1)
    assert sorted(rates) == [1, 2]
    assert all(len(r) == 2 and min(r) > 0 for r in rates.values())
    completions, columns, expected = bench.assert_batch(random.Random(3), 2)
    assert len(set(expected)) >= 1 and set(columns) == {"tests"}
    with VerifierPool(load_verifier("code"), timeout_s=30, workers=2) as pool:
        assert bench.run_once(pool, (completions, columns, expected)) > 0


def test_a_wrong_verdict_stops_the_benchmark(bench):
    completions, columns, expected = bench.numeric_batch(random.Random(0), 4)
    flipped = [not e for e in expected]
    with VerifierPool(load_verifier("math"), timeout_s=30, workers=1) as pool, \
            pytest.raises(RuntimeError, match="math: item 0 got"):
        bench.run_once(pool, (completions, columns, flipped))


def test_table_and_header(bench):
    rows = [{"verifier": "code", "case": "stdin", "workers": 2, "items": 12, "reps": 5,
             "median": 5.0, "min": 4.0, "max": 6.25, "runs_per_item": 2}]
    table = bench.format_table(rows)
    assert "| code | stdin | 2 | 12 | 5 | 5.0 | 4.0-6.2 | 10.0 |" in table
    assert bench.under_load((2.5, 1.0, 1.0), (1.0, 1.0, 1.0), cores=2)
    assert not bench.under_load((1.5, 3.0, 3.0), (1.9, 3.0, 3.0), cores=2)
    text = bench.header(argparse.Namespace(quick=True), (5.0, 4.0, 3.0), (6.0, 5.0, 4.0), 12.0)
    assert "`python benchmarks/verifiers.py --quick`" in text
    assert "taken under load" in text
