"""The scoring pool: timeouts, error accounting, the error-rate stop, async/batched forms."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from posttrain.errors import VerifierError
from posttrain.verification import (
    VerifierPool,
    VerifierResult,
    load_verifier,
    run_verifier,
    verifier,
)


def test_raising_on_every_input_stops_with_a_message_naming_the_verifier(fresh_name):
    name = fresh_name("always_raises")

    @verifier(name=name)
    def broken(completion, answer):
        raise KeyError("no field 'solution' in sample")

    with pytest.raises(VerifierError) as info:
        run_verifier(name, [f"completion {i}" for i in range(10)], {"answer": list(range(10))})
    msg = str(info.value)
    assert f"verifier '{name}'" in msg
    assert "failed on 10 of the last 10 items (10 errors, 0 timeouts" in msg
    assert "KeyError: \"no field 'solution' in sample\"" in msg
    assert "'completion': 'completion 0'" in msg and "'answer': 0" in msg


def test_offending_input_is_truncated(fresh_name):
    @verifier(name=fresh_name("raises_long"))
    def broken(completion):
        raise ValueError("bad")

    with pytest.raises(VerifierError) as info:
        run_verifier(load_verifier(broken), ["x" * 10_000] * 8, {})
    assert "chars]" in str(info.value) and len(str(info.value)) < 800


def test_errors_below_the_rate_are_recorded_with_fallback_not_raised(fresh_name, caplog):
    @verifier(name=fresh_name("sometimes"))
    def sometimes(completion):
        if completion == "bad":
            raise RuntimeError("cannot parse")
        return 1.0

    completions = ["ok"] * 19 + ["bad"]
    scored = run_verifier(load_verifier(sometimes), completions, {}, fallback_score=0.25,
                          max_error_rate=0.1)
    assert scored.scores == [1.0] * 19 + [0.25]
    assert (scored.stats.n, scored.stats.errors, scored.stats.timeouts) == (20, 1, 0)
    assert scored.outcomes[-1].status == "error"
    assert scored.outcomes[-1].error == "RuntimeError: cannot parse"
    assert scored.stats.mean_score == pytest.approx((19 + 0.25) / 20)
    assert "1 of 20 items failed" in caplog.text  # logged, not swallowed


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -1, None, "0.5"])
def test_bad_scores_count_as_errors(fresh_name, bad):
    @verifier(name=fresh_name("badscore"))
    def bad_score(completion):
        return bad if completion == "b" else 0.5

    scored = run_verifier(load_verifier(bad_score), ["a", "b", "a", "a"], {})
    assert scored.stats.errors == 1 and scored.outcomes[1].status == "error"
    assert scored.scores == [0.5, 0.0, 0.5, 0.5]


def test_hanging_verifier_is_abandoned_after_timeout(fresh_name):
    release = threading.Event()

    @verifier(name=fresh_name("hangs"))
    def hangs(completion):
        if completion == "hang":
            release.wait(30)
        return 1.0

    try:
        start = time.monotonic()
        scored = run_verifier(load_verifier(hangs), ["hang", "a", "hang", "b", "c"], {},
                              timeout=0.3, workers=2, max_error_rate=0.5)
        elapsed = time.monotonic() - start
    finally:
        release.set()
    assert [o.status for o in scored.outcomes] == ["timeout", "ok", "timeout", "ok", "ok"]
    assert scored.stats.timeouts == 2 and scored.stats.errors == 0
    assert scored.outcomes[0].error == "timed out after 0.3 s"
    # Two workers both stuck at first: replacements keep the run going; it ends near 0.3 s.
    assert elapsed < 2.0


def test_timeouts_count_toward_the_error_rate_stop(fresh_name):
    release = threading.Event()

    @verifier(name=fresh_name("allhang"))
    def all_hang(completion):
        release.wait(30)
        return 1.0

    try:
        with pytest.raises(VerifierError, match=r"0 errors, 8 timeouts.*timed out after 0.2 s"):
            run_verifier(load_verifier(all_hang), ["x"] * 8, {}, timeout=0.2, workers=8)
    finally:
        release.set()


def test_small_batches_are_pooled_until_min_items(fresh_name):
    @verifier(name=fresh_name("fails"))
    def fails(completion):
        raise ValueError("nope")

    with VerifierPool(load_verifier(fails), timeout_s=5, workers=1, min_items=6) as pool:
        first = pool.run(["a", "b", "c"], {})  # 3 outcomes: too few to judge
        assert first.stats.errors == 3
        with pytest.raises(VerifierError, match="failed on 6 of the last 6 items"):
            pool.run(["d", "e", "f"], {})
        assert pool.totals.errors == 6


def test_submit_returns_a_future_and_totals_accumulate():
    with VerifierPool(load_verifier("exact"), timeout_s=5, workers=2) as pool:
        futures = [pool.submit([str(i), "x"], {"answer": [str(i), "y"]}) for i in range(3)]
        results = [f.result(timeout=10) for f in futures]
        assert all(r.scores == [1.0, 0.0] for r in results)
        totals = pool.totals
    assert (totals.n, totals.errors, totals.mean_score) == (6, 0, 0.5)


def test_async_verifiers_run_concurrently_across_workers(fresh_name):
    @verifier(name=fresh_name("async_sleep"))
    async def slow(completion):
        await asyncio.sleep(0.2)
        return VerifierResult(1.0, True, completion)

    start = time.monotonic()
    scored = run_verifier(load_verifier(slow), ["a", "b", "c", "d"], {}, workers=4)
    assert time.monotonic() - start < 0.6  # 4 x 0.2 s in parallel, not 0.8 s in series
    assert [r.extracted for r in scored.results] == ["a", "b", "c", "d"]


def test_batched_verifier_gets_one_call_and_per_item_validation(fresh_name):
    calls = []

    @verifier(name=fresh_name("batch"), batched=True)
    def batch(completions, answer):
        calls.append(len(completions))
        return [1.0 if c == a else (float("nan") if c == "nan" else 0.0)
                for c, a in zip(completions, answer)]

    scored = run_verifier(load_verifier(batch), ["a", "nan", "c"], {"answer": ["a", "b", "d"]})
    assert calls == [3]
    assert [o.status for o in scored.outcomes] == ["ok", "error", "ok"]
    assert scored.scores == [1.0, 0.0, 0.0]


def test_batched_verifier_returning_wrong_length_fails_the_batch(fresh_name):
    @verifier(name=fresh_name("shortbatch"), batched=True)
    def short(completions):
        return [1.0]

    with pytest.raises(VerifierError, match="returned list of length 1; expected a list of 8"):
        run_verifier(load_verifier(short), ["a"] * 8, {})


def test_missing_column_fails_before_scoring():
    with pytest.raises(VerifierError, match=r"'math' needs column\(s\) answer"):
        run_verifier("math", ["1"], {"solution": ["1"]})


def test_pool_argument_validation():
    loaded = load_verifier("exact")
    for kwargs, key in [({"fallback_score": 2.0}, "fallback_score"),
                        ({"max_error_rate": -1}, "max_error_rate"), ({"timeout_s": 0}, "timeout_s")]:
        with pytest.raises(VerifierError, match=key):
            VerifierPool(loaded, **kwargs)


def test_a_verifier_that_hangs_everywhere_stops_the_run_instead_of_leaking_threads(fresh_name):
    release = threading.Event()

    @verifier(name=fresh_name("hang_forever"))
    def hang(completion):
        release.wait(30)
        return 1.0

    try:
        # 1 worker: at most 4 abandoned threads are tolerated, the 5th stuck call stops the run.
        with pytest.raises(VerifierError, match=r"hangs: 5 timed-out calls are still running"):
            run_verifier(load_verifier(hang), ["x"] * 6, {}, timeout=0.05, workers=1,
                         max_error_rate=1.0)
    finally:
        release.set()
