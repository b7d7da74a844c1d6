"""Verifier calls in worker processes: CPU-bound checks scale with cores, a stuck call is killed.

Threads cannot run sympy in parallel (it holds the GIL) and cannot be killed. Here each worker
is a fresh interpreter that loads the verifier itself (by reference: registered name, module or
file, with the recipe's options) and scores items one after another; the parent hands out
*chunks* of items that share their columns (the completions of one prompt share its gold
answer, so a verifier that caches per answer, like ``math``, parses it once per process).
A chunk goes to the worker its columns hash to, batch after batch, so a prompt seen again (the
next epoch, the next repetition) finds its parses in that worker's caches; an idle worker with
nothing of its own takes the last chunk of the busiest other worker, so affinity never leaves a
core idle.

Timeouts: a worker scores its chunk in order and sends each result as it finishes, so the
parent knows when each item started. An item past ``timeout_s`` gets its worker SIGKILLed and
is a timeout; a worker that dies (segfault, ``os._exit``) makes its current item an error. Either
way a fresh worker takes the rest of the chunk. Errors inside the verifier come back as
"error" outcomes, counted by the pool like those of threads.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from posttrain.common.plugins import USER_CODE_PACKAGE
from posttrain.errors import VerifierError

START_TIMEOUT_S = 120.0  # importing sympy and the verifier on a loaded 2-core machine
CHUNK_ITEMS = 8  # a group of 8 completions per chunk: its gold and repeated answers stay in one process

Item = tuple[int, Any, dict[str, Any]]  # index in the batch, completion, that item's columns


@dataclass(frozen=True)
class VerifierRecipe:
    """What a worker needs to load the verifier itself (picklable)."""

    ref: str
    options: dict[str, Any]
    base_dir: str | None = None
    module: str | None = None  # imported first: registers a plugin verifier named by ``ref``
    sys_path: tuple[str, ...] = ()  # the parent's import path (tests and scripts extend it)

    def load(self):
        import importlib

        from posttrain.verification.loading import load_verifier

        sys.path[:] = list(self.sys_path) or sys.path
        if self.module:
            importlib.import_module(self.module)
        return load_verifier(self.ref, self.base_dir, **self.options)


def worker_main(fd: int) -> None:
    """A worker's life: read its recipe, load the verifier, then score chunks until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = Connection(fd)
    try:
        verifier = conn.recv().load()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("load_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for index, completion, columns in chunk:
            start = time.monotonic()
            try:
                outcome: tuple[str, Any] = ("ok", verifier(completion, **columns))
            except BaseException as exc:  # noqa: BLE001 - the verifier's failure, counted
                outcome = ("error", f"{type(exc).__name__}: {exc}")
            try:
                conn.send((index, *outcome, time.monotonic() - start))
            except Exception as exc:  # noqa: BLE001 - e.g. a result that does not pickle
                conn.send((index, "error", f"result cannot be sent back: {exc}",
                           time.monotonic() - start))


@dataclass(eq=False)  # identity: a slot's worker is found with list.index
class _Worker:
    process: subprocess.Popen
    conn: Connection
    chunk: deque[Item] = field(default_factory=deque)
    item_started: float = 0.0


class ProcessWorkers:
    """``size`` spawned worker processes scoring items with per-item timeouts; close() ends them."""

    def __init__(self, size: int, name: str, recipe: VerifierRecipe):
        self._size = max(1, int(size))
        self._name = name
        self._recipe = recipe
        self._workers: list[_Worker] = []
        self.restarts = 0

    def _start(self, count: int) -> list[_Worker]:
        started = []
        for _ in range(count):
            # A fresh interpreter (not multiprocessing's spawn, which re-runs the caller's main
            # script when it has no __main__ guard), talking over a socket pair.
            ours, theirs = socket.socketpair()
            code = f"from posttrain.verification.processes import worker_main; worker_main({theirs.fileno()})"
            process = subprocess.Popen([sys.executable, "-c", code], pass_fds=(theirs.fileno(),),
                                       stdin=subprocess.DEVNULL)
            theirs.close()
            conn = Connection(ours.detach())
            conn.send(self._recipe)
            started.append(_Worker(process, conn))
        deadline = time.monotonic() + START_TIMEOUT_S
        for worker in started:
            left = deadline - time.monotonic()
            message = worker.conn.recv() if worker.conn.poll(max(0.0, left)) else None
            if not message or message[0] != "ready":
                self._kill(worker)
                why = message[1] if message else f"no answer within {START_TIMEOUT_S:g} s"
                raise VerifierError(
                    f"verifier {self._recipe.ref!r}: a worker process could not load it ({why}); "
                    "a verifier run in processes must be importable by reference, or use "
                    "executor: thread")
        return started

    @staticmethod
    def _kill(worker: _Worker) -> None:
        if worker.process.poll() is None:
            worker.process.kill()
        try:
            worker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # unkillable (D state): left to the OS; the pool goes on without it
        worker.conn.close()

    def _replace(self, worker: _Worker) -> None:
        """A fresh worker takes ``worker``'s slot (its chunks stay routed to that slot)."""
        self._kill(worker)
        slot = self._workers.index(worker)
        self.restarts += 1
        self._workers[slot] = self._start(1)[0]

    def run_items(self, items: list[Item], timeout_s: float) -> dict[int, tuple[str, Any, float]]:
        """Score ``items``; return index -> (status, value, seconds) for every one of them."""
        if len(self._workers) < self._size:
            self._workers += self._start(self._size - len(self._workers))
        queue = _ChunkQueue(items, len(self._workers))
        outcomes: dict[int, tuple[str, Any, float]] = {}
        while len(outcomes) < len(items):
            self._hand_out(queue)
            now = time.monotonic()
            busy = [w for w in self._workers if w.chunk]
            if not busy:
                continue  # a replacement has just started: hand it the chunk
            wait_s = min(w.item_started + timeout_s for w in busy) - now
            ready = wait([w.conn for w in busy], timeout=max(0.0, wait_s))
            for worker in busy:
                if worker.conn in ready:
                    self._receive(worker, outcomes, queue)
                elif time.monotonic() - worker.item_started >= timeout_s:
                    index = worker.chunk.popleft()[0]
                    outcomes[index] = ("timeout", None, time.monotonic() - worker.item_started)
                    self._requeue(worker, queue)
        return outcomes

    def _hand_out(self, queue: _ChunkQueue) -> None:
        """Give each idle worker a chunk: first every worker its own, then the rest steal (so a
        worker early in the list does not take a chunk whose own worker is idle too)."""
        for steal in (False, True):
            for slot in range(len(self._workers)):
                worker = self._workers[slot]
                chunk = None if worker.chunk else queue.take(slot, steal)
                if chunk is None:
                    continue
                try:
                    worker.conn.send(list(chunk))
                except OSError:  # it died while idle (nothing of this batch was lost)
                    queue.put_back(slot, chunk)
                    self._replace(worker)
                    continue
                worker.chunk, worker.item_started = chunk, time.monotonic()  # after any replacement's start

    def _receive(self, worker: _Worker, outcomes: dict, queue: _ChunkQueue) -> None:
        try:
            index, status, value, duration = worker.conn.recv()
        except (EOFError, OSError):
            try:
                code = worker.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            index = worker.chunk.popleft()[0]
            outcomes[index] = ("error", f"verifier worker process died (exit code {code})",
                               time.monotonic() - worker.item_started)
            self._requeue(worker, queue)
            return
        outcomes[index] = (status, value, duration)
        worker.chunk.popleft()
        worker.item_started = time.monotonic()

    def _requeue(self, worker: _Worker, queue: _ChunkQueue) -> None:
        """Replace a killed or dead worker; the rest of its chunk goes first to its successor."""
        rest, slot = worker.chunk, self._workers.index(worker)
        worker.chunk = deque()
        self._replace(worker)
        if rest:
            queue.put_back(slot, rest)

    def close(self) -> None:
        """Ask every worker to exit; kill those that do not within a few seconds."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self._workers:
            try:
                worker.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._kill(worker)
        self._workers = []


def _chunks(items: list[Item]) -> list[deque[Item]]:
    """Items grouped by their columns (a prompt's completions stay together), packed into chunks
    of about CHUNK_ITEMS (one message each way per chunk start: small groups share a chunk)."""
    out: list[deque[Item]] = []
    for group in _groups(items).values():
        for start in range(0, len(group), CHUNK_ITEMS):
            part = group[start:start + CHUNK_ITEMS]
            if out and len(out[-1]) + len(part) <= CHUNK_ITEMS:
                out[-1].extend(part)
            else:
                out.append(deque(part))
    return out


def _groups(items: list[Item]) -> dict[str, list[Item]]:
    """Items by their columns' repr (a prompt's completions share theirs), in first-seen order."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(repr(sorted(item[2].items())), []).append(item)
    return groups


class _ChunkQueue:
    """Chunks waiting for a worker, each group of items routed to the slot its columns hash to.

    Groups are routed first and packed into chunks within their slot, so a prompt goes to the same
    slot in every batch whatever it is packed with. ``take(slot)`` gives that slot's next chunk,
    or, when it has none, the last chunk of the slot with the most left (work stealing from the
    far end, where its owner would come last). The hash is crc32 of the columns' repr.
    """

    def __init__(self, items: list[Item], slots: int):
        routed: list[list[Item]] = [[] for _ in range(slots)]
        for key, group in _groups(items).items():
            routed[zlib.crc32(key.encode("utf-8", "backslashreplace")) % slots] += group
        self._queues: list[deque[deque[Item]]] = [deque(_chunks(part)) for part in routed]

    def __bool__(self) -> bool:
        return any(self._queues)

    def take(self, slot: int, steal: bool = True) -> deque[Item] | None:
        """The slot's next chunk; else (with ``steal``) another slot's last; None when none."""
        if self._queues[slot]:
            return self._queues[slot].popleft()
        busiest = max(self._queues, key=len)
        return busiest.pop() if steal and busiest else None

    def put_back(self, slot: int, chunk: deque[Item]) -> None:
        self._queues[slot].appendleft(chunk)


def recipe_for(verifier: Any) -> VerifierRecipe:
    """The VerifierRecipe of a LoadedVerifier (its reference, options, folder and module)."""
    fn = verifier.spec.fn
    module = getattr(fn, "__module__", None)
    importable = module not in (None, "__main__") and not str(module).startswith(USER_CODE_PACKAGE + ".")
    base_dir = getattr(verifier, "base_dir", None)
    return VerifierRecipe(verifier.ref, dict(verifier.options),
                          str(Path(base_dir)) if base_dir is not None else None,
                          module if importable else None, tuple(sys.path))
