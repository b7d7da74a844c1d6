"""Parent side of the warm launcher: one zygote per isolation mode, shared by all threads.

``Zygote.start_run`` asks the zygote to fork a sandboxed child for a prepared run directory and
returns a :class:`ZygoteRun` (its pid; ``wait`` for its exit status). A reader thread routes the
zygote's answers to the runs waiting for them. When the zygote dies (crashed, killed, or killed
by code that escaped), every run it had in flight fails with :class:`SandboxError` (the code
verifier counts that item as an error, never as a pass), its children's process groups are
killed, and the next run starts a fresh zygote (``restarts`` counts them).
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from posttrain.errors import PosttrainError

LAUNCHER = Path(__file__).with_name("_launcher.py")
ANSWER_TIMEOUT_S = 30.0  # for the fork to be reported, and for a killed child to be reaped


class ZygoteDied(PosttrainError):
    """The zygote went away while a run was in flight (raised as SandboxError by the runner)."""


class ZygoteRun:
    """One execution in flight: ``pid`` once forked, ``returncode`` once reaped."""

    def __init__(self):
        self.pid: int | None = None
        self.request_id = -1
        self.returncode: int | None = None
        self.error: str | None = None
        self.forked = threading.Event()
        self.reaped = threading.Event()

    def wait(self, timeout_s: float) -> bool:
        """True once the child has exited and been reaped; raises ZygoteDied if the zygote died."""
        done = self.reaped.wait(timeout_s)
        if self.error is not None:
            raise ZygoteDied(self.error)
        return done


class Zygote:
    """A running zygote process and the runs it has in flight."""

    def __init__(self, env: dict[str, str]):
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(LAUNCHER), "--zygote", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env=env, cwd="/", start_new_session=True)
        theirs.close()
        self._sock = ours
        self._send_lock = threading.RLock()  # _died takes it too, also from under it
        self._runs: dict[int, ZygoteRun] = {}
        self._ids = itertools.count()
        self.alive = True
        threading.Thread(target=self._read, name="sandbox-zygote-reader", daemon=True).start()

    def start_run(self, cfg: dict, run_dir: Path, env: dict[str, str]) -> ZygoteRun:
        """Ask for a child; return once it is forked (its pid is then known)."""
        run = ZygoteRun()
        request_id = run.request_id = next(self._ids)
        message = json.dumps({"id": request_id, "cfg": cfg, "run_dir": str(run_dir), "env": env})
        with self._send_lock:
            if not self.alive:
                raise ZygoteDied("the sandbox zygote had exited before this run")
            self._runs[request_id] = run
            try:
                self._sock.sendall(message.encode() + b"\n")
            except OSError as exc:
                self._died(f"the sandbox zygote stopped taking requests ({exc})")
        if not run.forked.wait(ANSWER_TIMEOUT_S) and run.error is None:
            self.kill()
            raise ZygoteDied(f"the sandbox zygote did not fork within {ANSWER_TIMEOUT_S:g} s")
        if run.error is not None:
            raise ZygoteDied(run.error)
        return run

    def kill_run(self, run: ZygoteRun) -> None:
        """Ask the zygote to SIGKILL a run's process group (it alone knows the pid is still live)."""
        with self._send_lock:
            if not self.alive or run.reaped.is_set():
                return
            try:
                self._sock.sendall(json.dumps({"id": run.request_id, "kill": True}).encode() + b"\n")
            except OSError as exc:
                self._died(f"the sandbox zygote stopped taking requests ({exc})")

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                code = self.process.poll()
                self._died(f"the sandbox zygote died (exit status {code}) while this item ran; "
                           "it is restarted for the next run")
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                answer = json.loads(line)
                with self._send_lock:
                    run = self._runs.get(answer["id"])
                    if run is not None and "returncode" in answer:
                        del self._runs[answer["id"]]
                if run is None:
                    continue
                if "pid" in answer:
                    run.pid = answer["pid"]
                    run.forked.set()
                else:
                    run.returncode = answer["returncode"]
                    run.reaped.set()

    def _died(self, why: str) -> None:
        with self._send_lock:
            self.alive = False
            runs, self._runs = list(self._runs.values()), {}
        for run in runs:
            run.error = why
            if run.pid is not None:  # orphans: their group goes with the zygote
                kill_group(run.pid)
            run.forked.set()
            run.reaped.set()

    def kill(self) -> None:
        """End the zygote (its reader then fails whatever was in flight)."""
        try:
            self.process.kill()
        except ProcessLookupError:
            pass
        self._sock.close()
        self.process.wait(timeout=10)


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group (a run's child leads its own session)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_lock = threading.Lock()
_zygotes: dict[str, Zygote] = {}
restarts = {"count": 0}


def zygote_for(mode: str, env: dict[str, str]) -> Zygote:
    """The live zygote for ``mode``, started (or restarted after a death) on demand."""
    with _lock:
        current = _zygotes.get(mode)
        if current is not None and current.alive and current.process.poll() is None:
            return current
        if current is not None:
            restarts["count"] += 1
        _zygotes[mode] = Zygote(env)
        return _zygotes[mode]

