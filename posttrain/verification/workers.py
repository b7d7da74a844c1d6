"""Daemon worker threads whose stuck calls can be abandoned.

A Python thread cannot be killed. When a verifier call runs past its deadline we mark the task
abandoned (its late result is discarded), retire the thread that runs it (it exits when the
call eventually returns) and start a replacement, so one hanging verifier never shrinks the
pool or blocks the run. Code that must really be stopped (untrusted programs) belongs in the
sandbox, which kills processes.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class StuckWorkersError(RuntimeError):
    """Too many timed-out calls are still running: the callee hangs."""


class Task:
    """One call: ``outcome`` becomes ("ok", value), ("error", exc) or ("timeout", None)."""

    __slots__ = ("duration_s", "fn", "outcome", "started", "timeout_s", "worker")

    def __init__(self, fn: Callable[[], Any], timeout_s: float):
        self.fn = fn
        self.timeout_s = timeout_s
        self.started: float | None = None
        self.outcome: tuple[str, Any] | None = None
        self.worker: threading.Thread | None = None
        self.duration_s = 0.0


class AbandoningWorkers:
    """A fixed number of live worker threads; ``run_tasks`` enforces per-task timeouts."""

    def __init__(self, workers: int, name: str, max_abandoned: int):
        self._size = max(1, int(workers))
        self._name = name
        self._max_abandoned = max_abandoned
        self._queue: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._live: set[threading.Thread] = set()
        self._retired: set[threading.Thread] = set()
        self._closed = False

    @property
    def abandoned_alive(self) -> int:
        """Threads still stuck in a call that timed out."""
        with self._cond:
            self._retired = {t for t in self._retired if t.is_alive()}
            return len(self._retired)

    def _spawn(self) -> None:
        t = threading.Thread(target=self._loop, name=f"{self._name}-{len(self._live)}",
                             daemon=True)
        self._live.add(t)
        t.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            task = self._queue.get()
            if task is None:
                return
            with self._cond:
                task.started = time.monotonic()
                task.worker = me
            try:
                outcome = ("ok", task.fn())
            except BaseException as exc:  # noqa: BLE001 - recorded and counted by the pool
                outcome = ("error", exc)
            with self._cond:
                if task.outcome is None:
                    task.outcome = outcome
                    task.duration_s = time.monotonic() - task.started
                    self._cond.notify_all()
                if me in self._retired:
                    return  # a replacement already took this thread's place

    def run_tasks(self, tasks: list[Task]) -> None:
        """Run ``tasks`` and return when each has an outcome (finished, failed or timed out).

        Raises StuckWorkersError if more than ``max_abandoned`` timed-out calls are still running
        (the pool owner turns that into a VerifierError naming the verifier).
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("worker pool is closed")
            while len(self._live) < self._size:
                self._spawn()
        for task in tasks:
            self._queue.put(task)
        with self._cond:
            while True:
                pending = [t for t in tasks if t.outcome is None]
                if not pending:
                    return
                now = time.monotonic()
                wait = 0.1
                for task in pending:
                    if task.started is None:
                        continue
                    left = task.started + task.timeout_s - now
                    if left <= 0:
                        self._abandon(task, now)
                    else:
                        wait = min(wait, left)
                self._cond.wait(timeout=wait)

    def _abandon(self, task: Task, now: float) -> None:
        task.outcome = ("timeout", None)
        task.duration_s = now - task.started
        worker = task.worker
        if worker is not None and worker in self._live:
            self._live.discard(worker)
            self._retired.add(worker)
            self._spawn()
        stuck = sum(1 for t in self._retired if t.is_alive())
        if stuck > self._max_abandoned:
            raise StuckWorkersError(f"{stuck} timed-out calls are still running (hung threads)")

    def close(self) -> None:
        """Stop the live workers once their queue drains (stuck ones stay abandoned)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for _ in self._live:
                self._queue.put(None)
