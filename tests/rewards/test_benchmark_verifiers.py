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


def test_numeric_and_code_batches_score_as_expected(bench, monkeypatch):
    """Each pool of a case; run_once raises if any verdict differs from the generated label."""
    monkeypatch.setenv("POSTTRAIN_SANDBOX_LAUNCHER", "zygote")  # run_once sets it: restore after
    numeric = next(c for c in bench.CASES if c.name == "numeric, default extraction")
    rates = bench.measure(numeric, reps=2, items=40, seed=1)
    assert sorted(rates) == [("process", 1, "-"), ("process", 2, "-"), ("thread", 1, "-")]
    assert all(len(r) == 2 and min(r) > 0 for r in rates.values())
    symbolic = next(c for c in bench.CASES if c.name == "symbolic, 32 golds x 8")
    completions, columns, expected = symbolic.make(random.Random(2), 24)
    assert len(set(columns["answer"])) == 3 and len(set(expected)) == 2  # 3 prompts x 8
    completions, columns, expected = bench.assert_batch(random.Random(3), 2)
    assert len(set(expected)) >= 1 and set(columns) == {"tests"}
    with VerifierPool(load_verifier("code"), timeout_s=30, workers=2) as pool:
        for launcher in ("fresh", "zygote"):  # run_once sets the sandbox launcher
            assert bench.run_once(pool, (completions, columns, expected), launcher) > 0


def test_a_wrong_verdict_stops_the_benchmark(bench):
    completions, columns, expected = bench.numeric_batch(random.Random(0), 4)
    flipped = [not e for e in expected]
    with VerifierPool(load_verifier("math"), timeout_s=30, workers=1) as pool, \
            pytest.raises(RuntimeError, match="math: item 0 got"):
        bench.run_once(pool, (completions, columns, flipped))


def test_table_and_header(bench):
    rows = [{"verifier": "code", "case": "stdin", "executor": "thread", "workers": 2,
             "launcher": "zygote", "items": 12, "reps": 5, "median": 5.0, "min": 4.0, "max": 6.25,
             "ratio": 1.75, "runs_per_item": 2}]
    table = bench.format_table(rows)
    assert "| code | stdin | thread | 2 | zygote | 12 | 5 | 5.0 | 4.0-6.2 | 1.75 | 10.0 |" in table
    assert bench.under_load((2.5, 1.0, 1.0), (1.0, 1.0, 1.0), cores=2)
    assert not bench.under_load((1.5, 3.0, 3.0), (1.9, 3.0, 3.0), cores=2)
    text = bench.header(argparse.Namespace(quick=True), (5.0, 4.0, 3.0), (6.0, 5.0, 4.0), 12.0)
    assert "`python benchmarks/verifiers.py --quick`" in text
    assert "taken under load" in text
