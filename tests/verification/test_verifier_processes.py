"""The process executor: same verdicts as threads, stuck items killed, crashed workers replaced."""
from __future__ import annotations

import os
import textwrap
import time

import pytest

from posttrain.errors import VerifierError
from posttrain.verification import VerifierPool, load_verifier, verifier
from posttrain.verification.processes import _ChunkQueue

PLUGIN = textwrap.dedent("""
    import os, time

    def check(completion, answer):
        if completion == "hang":
            time.sleep(600)
        if completion == "crash":
            os._exit(3)
        if completion == "raise":
            raise ZeroDivisionError("told to")
        if completion == "pid":
            return {"score": 1.0}  # not a valid result: an error, counted
        return float(completion == answer)

    def whoami(completion):
        return float(os.getpid() % 2)

    def worker_pid(completion, group):
        from posttrain.verification import VerifierResult
        return VerifierResult(1.0, True, str(os.getpid()))
""")


@pytest.fixture
def plugin(tmp_path):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    return tmp_path


def test_math_runs_in_processes_by_default_with_the_verdicts_of_threads():
    math = load_verifier("math")
    completions = [f"So $x = \\boxed{{\\frac{{{k}}}{{9}}}}$." for k in range(8, 13)] * 4
    columns = {"answer": ["8/9", "1", "\\frac{11}{9}", "12/9", "4/3"] * 4}
    with VerifierPool(math, timeout_s=30, workers=2) as processes, \
            VerifierPool(math, timeout_s=30, workers=2, executor="thread") as threads:
        assert (processes.executor, threads.executor) == ("process", "thread")
        by_process = processes.run(completions, columns)
        by_thread = threads.run(completions, columns)
    assert by_process.scores == by_thread.scores == [1.0, 1.0, 0.0, 0.0, 1.0] * 4
    assert [o.result for o in by_process.outcomes] == [o.result for o in by_thread.outcomes]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_stuck_item_is_killed_and_counted_the_rest_scored(plugin):
    v = load_verifier("./plugin.py:check", base_dir=plugin)
    with VerifierPool(v, timeout_s=2, workers=2, executor="process", max_error_rate=1.0) as pool:
        assert pool.run(["a"], {"answer": ["a"]}).scores == [1.0]  # workers start on first use
        before = {w.process.pid for w in pool._processes._workers}
        start = time.monotonic()
        scored = pool.run(["a", "hang", "b", "a"], {"answer": ["a", "a", "c", "d"]})
        elapsed = time.monotonic() - start
        assert [o.status for o in scored.outcomes] == ["ok", "timeout", "ok", "ok"]
        assert scored.scores == [1.0, 0.0, 0.0, 0.0]
        assert scored.stats.timeouts == 1 and pool._processes.restarts == 1
        assert elapsed < 30
        after = {w.process.pid for w in pool._processes._workers}
        killed = before - after
        assert len(killed) == 1 and not any(_alive(pid) for pid in killed)
        # The pool still works after the replacement, with a live worker per slot.
        again = pool.run(["a", "b"], {"answer": ["a", "a"]})
        assert again.scores == [1.0, 0.0] and len(after) == 2
    assert not any(_alive(pid) for pid in after)  # close() ends the workers


def test_a_worker_that_dies_makes_its_item_an_error(plugin):
    v = load_verifier("./plugin.py:check", base_dir=plugin)
    with VerifierPool(v, timeout_s=20, workers=1, executor="process", max_error_rate=1.0) as pool:
        scored = pool.run(["crash", "a", "raise", "pid"], {"answer": ["a"] * 4})
        statuses = [o.status for o in scored.outcomes]
        assert statuses == ["error", "ok", "error", "error"]
        assert scored.outcomes[0].error == "verifier worker process died (exit code 3)"
        assert scored.outcomes[2].error == "ZeroDivisionError: told to"
        assert "expected a float in [0, 1]" in scored.outcomes[3].error
        assert scored.scores[1] == 1.0 and pool._processes.restarts == 1


def test_items_are_spread_over_worker_processes(plugin):
    v = load_verifier("./plugin.py:whoami", base_dir=plugin)
    with VerifierPool(v, timeout_s=20, workers=2, executor="process") as pool:
        pool.run(["x"] * 4, {"group": [0, 0, 1, 1]})  # starts both workers
        pids = {w.process.pid for w in pool._processes._workers}
        assert len(pids) == 2 and os.getpid() not in pids


def test_a_prompt_goes_to_the_same_worker_batch_after_batch(plugin):
    """Affinity: a group's chunk goes to the worker its columns hash to, so that worker's caches
    (math's parsed gold and verdicts) serve it again; the other idle worker does not take it."""
    v = load_verifier("./plugin.py:worker_pid", base_dir=plugin)
    with VerifierPool(v, timeout_s=20, workers=2, executor="process") as pool:
        seen: dict[int, set[str]] = {}
        for _ in range(3):
            for group in range(6):
                scored = pool.run(["x"] * 8, {"group": [group] * 8})
                pids = {o.result.extracted for o in scored.outcomes}
                seen.setdefault(group, set()).update(pids)
        assert all(len(pids) == 1 for pids in seen.values()), seen
        assert len(set().union(*seen.values())) == 2  # the groups hash to both workers


def _items(keys, per_group: int = 8) -> list:
    return [(k * 100 + i, "x", {"group": k}) for k in keys for i in range(per_group)]


def _slots(queue) -> list[list[int]]:
    return [[item[2]["group"] for chunk in q for item in chunk] for q in queue._queues]


def test_chunk_queue_routes_by_columns_and_steals_from_the_far_end():
    queue = _ChunkQueue(_items(range(12)), 2)
    own = [sorted(set(groups)) for groups in _slots(queue)]
    assert own[0] and own[1] and sorted(own[0] + own[1]) == list(range(12))
    assert _key(queue.take(0)) == own[0][0]  # its own, in order
    while queue._queues[0]:
        queue.take(0)
    assert queue.take(0, steal=False) is None
    assert _key(queue.take(0)) == own[1][-1]  # stolen from the end of the other slot's queue
    stolen = queue.take(1)
    assert _key(stolen) == own[1][0]
    queue.put_back(1, stolen)  # a replaced worker's chunk goes first to its successor
    assert _key(queue.take(1)) == own[1][0]


def test_small_groups_keep_their_slot_whatever_they_are_packed_with():
    """Groups of 4 share chunks of 8; each group is routed before packing, so a prompt's slot does
    not depend on which prompt it is packed with in this batch."""
    import random

    keys = list(range(32))
    slots = {}
    for seed in range(3):
        random.Random(seed).shuffle(keys)
        for slot, groups in enumerate(_slots(_ChunkQueue(_items(keys, per_group=4), 2))):
            for group in groups:
                assert slots.setdefault(group, slot) == slot, group


def _key(chunk) -> int:
    return chunk[0][2]["group"]


def test_a_verifier_a_fresh_interpreter_cannot_load_is_a_clear_error(fresh_name):
    @verifier(name=fresh_name("local"), executor="process")
    def local(completion):
        return 1.0

    loaded = load_verifier(local.__posttrain_verifier__.name)
    with VerifierPool(loaded, timeout_s=5, workers=1) as pool:
        assert pool.executor == "process"
        with pytest.raises(VerifierError, match="could not load it .*executor: thread"):
            pool.run(["x"], {})


def test_batched_verifiers_do_not_take_the_process_executor(fresh_name):
    with pytest.raises(VerifierError, match="a batched verifier runs on a thread"):
        verifier(lambda completions: [1.0], name=fresh_name("b"), batched=True, executor="process")
    majority = load_verifier("majority_vote", group_size=2)
    assert VerifierPool(majority, executor="auto").executor == "thread"
    with pytest.raises(VerifierError, match="is batched"):
        VerifierPool(majority, executor="process")
    with pytest.raises(VerifierError, match="expected one of auto, thread, process"):
        VerifierPool(load_verifier("exact"), executor="fork")


def test_a_worker_that_died_between_batches_is_replaced(plugin):
    v = load_verifier("./plugin.py:check", base_dir=plugin)
    with VerifierPool(v, timeout_s=20, workers=1, executor="process") as pool:
        assert pool.run(["a"], {"answer": ["a"]}).scores == [1.0]
        idle = pool._processes._workers[0].process
        idle.kill()
        idle.wait(timeout=10)
        scored = pool.run(["a", "b"], {"answer": ["a", "a"]})
        assert [o.status for o in scored.outcomes] == ["ok", "ok"] and scored.scores == [1.0, 0.0]
        assert pool._processes.restarts == 1
