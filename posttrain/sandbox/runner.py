"""Parent side of the sandbox: start one isolated Python process per execution and reap it.

See ``_launcher.py`` for what happens inside the child and docs/verifiers.md ("Sandbox") for the
threat model. Each call gets its own temporary run directory (launcher config, the code, files
for stdin/stdout/stderr, the chroot mount point), deleted afterwards.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.sandbox.zygote import ANSWER_TIMEOUT_S, ZygoteDied, kill_group, zygote_for

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("_launcher.py")
SETUP_FAILED = 125
MODES = ("full", "userns", "audit")
# Fresh uids for "full" mode come from a range no distribution assigns to real users, so a
# per-run uid owns nothing on the host and its process count is this run's alone.
UID_BASE, UID_SPAN = 1_500_000_000, 500_000_000

_probe_lock = threading.Lock()
_probed_mode: str | None = None


class SandboxError(PosttrainError):
    """The sandbox itself could not be set up (not a failure of the code it ran)."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    ``killed_by`` is None for a normal exit, else ``"timeout"`` (wall clock), ``"cpu_limit"``
    (SIGXCPU), ``"file_size_limit"`` (SIGXFSZ) or ``"signal:NAME"``. ``stdout``/``stderr``
    are decoded with replacement and cut to the cap (head and tail kept).
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_by: str | None
    duration_s: float
    mode: str


def _keep_paths() -> list[str]:
    """The Python installation the child runs from (it must stay visible inside the chroot)."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sysconfig.get_paths()["stdlib"]),
             os.path.dirname(os.path.realpath(sys.executable))}
    # Keep only outermost paths: binding a child of an already-bound path is redundant.
    return sorted(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths))


def _count_processes(uid: int) -> int:
    return len(_pids_of_uid(uid))


def _pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes owned by ``uid``."""
    pids = []
    for entry in os.scandir("/proc"):
        try:
            # /proc/<pid> belongs to the process's uid: a stat is much cheaper than parsing status.
            if not entry.name.isdigit() or entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if state != "Z":  # a zombie is already dead; it waits for its (possibly slow) reaper
            pids.append(int(entry.name))
    return pids


def _sweep_uid(uid: int) -> None:
    """Kill every process left running as ``uid`` (escaped the process group, e.g. via setsid)."""
    for _ in range(200):
        pids = [p for p in _pids_of_uid(uid) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
    raise SandboxError(f"could not kill the processes of sandbox uid {uid}")


def _read_capped(path: Path, cap: int) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= cap:
            data = f.read()
        else:  # keep head and tail: results printed last (sentinels) must survive the cut
            head = f.read(cap // 2)
            f.seek(size - cap // 2)
            tail = f.read()
            data = head + f"\n...[{size - len(head) - len(tail)} bytes cut]...\n".encode() + tail
    return data.decode("utf-8", errors="replace")


def _killed_by(returncode: int, timed_out: bool) -> str | None:
    if timed_out:
        return "timeout"
    if returncode >= 0:
        return None
    sig = -returncode
    if sig == signal.SIGXCPU:
        return "cpu_limit"
    if sig == signal.SIGXFSZ:
        return "file_size_limit"
    try:
        return f"signal:{signal.Signals(sig).name}"
    except ValueError:
        return f"signal:{sig}"


def _launch_config(mode, run_dir, timeout_s, memory_mb, max_procs, max_file_mb, scratch_mb):
    uid = UID_BASE + random.SystemRandom().randrange(UID_SPAN)
    if mode == "full":
        nproc = max_procs  # per-run uid: the count starts at zero
    else:
        # Same uid as the caller: the kernel counts all of its processes, so allow ours on top.
        nproc = None if os.geteuid() == 0 else _count_processes(os.geteuid()) + max_procs
    return {
        "mode": mode,
        "code_path": str(run_dir / "main.py"),
        "root": str(run_dir / "root"),
        "scratch": str(run_dir / "scratch"),
        "keep_paths": _keep_paths(),
        "uid": uid,
        "gid": uid,
        "cpu_s": math.ceil(timeout_s) + 1,
        "memory_bytes": int(memory_mb) << 20,
        "file_bytes": int(max_file_mb) << 20,
        "scratch_bytes": int(scratch_mb) << 20,
        "nproc": nproc,
    }


def _environment(mode: str, scratch: str) -> dict[str, str]:
    home = "/sandbox/home" if mode == "full" else scratch
    tmp = "/sandbox/tmp" if mode == "full" else scratch
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home,
            "TMPDIR": tmp, "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}


LAUNCHERS = ("zygote", "fresh")


def _execute(code, stdin, timeout_s, mode, limits, scratch, max_output_bytes,
             launcher="fresh") -> SandboxResult:
    run_dir = Path(tempfile.mkdtemp(prefix="posttrain-sbx-", dir=scratch))
    try:
        cfg = _launch_config(mode, run_dir, timeout_s, **limits)
        (run_dir / "root").mkdir()
        (run_dir / "scratch").mkdir(mode=0o700)
        (run_dir / "main.py").write_text(code)
        (run_dir / "stdin").write_text(stdin)
        for name in ("stdout", "stderr"):
            (run_dir / name).touch()
        env = _environment(mode, cfg["scratch"])
        run = _run_in_zygote if launcher == "zygote" else _run_fresh
        try:
            returncode, timed_out, duration = run(cfg, run_dir, env, timeout_s)
        finally:
            if mode == "full":
                _sweep_uid(cfg["uid"])
        stderr = _read_capped(run_dir / "stderr", max_output_bytes)
        if returncode == SETUP_FAILED and "posttrain-sandbox: setup failed" in stderr:
            raise SandboxError(stderr.strip().splitlines()[-1])
        return SandboxResult(returncode, _read_capped(run_dir / "stdout", max_output_bytes),
                             stderr, timed_out, _killed_by(returncode, timed_out), duration, mode)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_fresh(cfg, run_dir: Path, env, timeout_s) -> tuple[int, bool, float]:
    """One new interpreter running _launcher.py for this execution."""
    (run_dir / "config.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-I", "-S", str(LAUNCHER), str(run_dir / "config.json")]
    with open(run_dir / "stdin", "rb") as fin, open(run_dir / "stdout", "wb") as fout, \
            open(run_dir / "stderr", "wb") as ferr:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=run_dir, env=env,
                                close_fds=True, start_new_session=True)
        timed_out = False
        try:
            timed_out = not _wait_exit(proc, timeout_s)
        finally:
            kill_group(proc.pid)  # start_new_session made the launcher its leader
            returncode = proc.wait()
    return returncode, timed_out, time.monotonic() - start


def _run_in_zygote(cfg, run_dir: Path, env, timeout_s) -> tuple[int, bool, float]:
    """A child forked by the warm launcher of this mode (see zygote.py and _zygote.py)."""
    zygote = zygote_for(cfg["mode"], _ZYGOTE_ENV)
    try:
        run = zygote.start_run(cfg, run_dir, env)
        start = time.monotonic()
        timed_out = not run.wait(timeout_s)
        if timed_out:  # the zygote kills the group (after an exit it does so before reaping)
            zygote.kill_run(run)
        if not run.wait(ANSWER_TIMEOUT_S):
            zygote.kill()
            raise SandboxError(f"the sandbox zygote did not reap a killed run within "
                               f"{ANSWER_TIMEOUT_S:g} s; it was restarted")
    except ZygoteDied as exc:
        raise SandboxError(str(exc)) from exc
    return run.returncode, timed_out, time.monotonic() - start


_ZYGOTE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until ``proc`` exits or ``timeout_s`` passes; True if it exited.

    ``Popen.wait(timeout)`` polls with a doubling sleep (up to 50 ms), so a run that ends after
    20 ms is noticed after about 60: most of a short execution's cost. A pidfd (Linux 5.3+)
    wakes us the moment the process exits.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here: the polling wait
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
    finally:
        os.close(fd)
    return bool(ready)


def probe_mode() -> str:
    """Return the strongest isolation mode that works here (cached; see ``_launcher.py``).

    ``POSTTRAIN_SANDBOX_MODE`` forces one mode (used by tests to exercise the fallbacks).
    """
    global _probed_mode
    forced = os.environ.get("POSTTRAIN_SANDBOX_MODE")
    if forced:
        if forced not in MODES:
            raise SandboxError(f"POSTTRAIN_SANDBOX_MODE={forced!r}; expected one of {MODES}")
        return forced
    with _probe_lock:
        if _probed_mode is None:
            failures = []
            for mode in MODES:
                try:
                    out = _execute("print('ok')", "", 20.0, mode, _DEFAULT_LIMITS, None, 4096)
                except SandboxError as exc:
                    failures.append(str(exc))
                    continue
                if out.returncode == 0 and out.stdout.strip() == "ok":
                    _probed_mode = mode
                    break
                failures.append(f"mode {mode}: exit {out.returncode}: {out.stderr[-300:]}")
            else:
                raise SandboxError("no sandbox mode works here: " + " | ".join(failures))
            if _probed_mode != "full":
                logger.warning("sandbox runs in the weaker %r mode (%s)", _probed_mode,
                               " | ".join(failures))
    return _probed_mode


_DEFAULT_LIMITS = {"memory_mb": 512, "max_procs": 16, "max_file_mb": 16, "scratch_mb": 64}


def run_python(code: str, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512,
               max_procs: int = 16, max_file_mb: int = 16, scratch: str | None = None, *,
               scratch_mb: int = 64, max_output_bytes: int = 65536,
               mode: str | None = None, launcher: str | None = None) -> SandboxResult:
    """Run untrusted Python ``code`` in a fresh, isolated, resource-limited process.

    Limits: wall clock ``timeout_s`` (the process group is SIGKILLed, and in ``full`` mode every
    process of the run's uid), CPU time ``ceil(timeout_s)+1`` s, address space ``memory_mb``,
    ``max_procs`` processes, ``max_file_mb`` per written file (stdout included), ``scratch_mb``
    of scratch space (``full`` mode), no core dumps. ``scratch`` is the directory under which the
    per-run temporary directory is created (default: the system temp dir); it is deleted after
    the run. ``mode`` overrides the probed isolation mode (see :func:`sandbox_info`).
    ``launcher``: "zygote" (default; ``POSTTRAIN_SANDBOX_LAUNCHER`` overrides) forks the run from
    a warm interpreter that has imported the launcher once; "fresh" starts a new interpreter per
    run. Both enter the same isolation in the run's own process; see zygote.py.

    Raises :class:`SandboxError` only when the sandbox cannot be set up; anything the code does
    (crash, timeout, limits) is reported in the returned :class:`SandboxResult`.

    >>> run_python("print(input()[::-1])", stdin="abc").stdout
    'cba\\n'
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    for key, value in (("memory_mb", memory_mb), ("max_procs", max_procs),
                       ("max_file_mb", max_file_mb), ("scratch_mb", scratch_mb)):
        if int(value) < 1:  # a tmpfs of size 0 would even mean "unlimited"
            raise ValueError(f"{key} must be at least 1, got {value}")
    limits = {"memory_mb": memory_mb, "max_procs": max_procs, "max_file_mb": max_file_mb,
              "scratch_mb": scratch_mb}
    launcher = launcher or os.environ.get("POSTTRAIN_SANDBOX_LAUNCHER") or "zygote"
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher={launcher!r}; expected one of {LAUNCHERS}")
    return _execute(code, stdin, float(timeout_s), mode or probe_mode(), limits, scratch,
                    max_output_bytes, launcher)


def sandbox_info() -> dict[str, str]:
    """Describe the isolation in force on this machine (probes once)."""
    mode = probe_mode()
    return {
        "mode": mode,
        "network": {"full": "network namespace (no interfaces up)",
                    "userns": "network namespace in a user namespace",
                    "audit": "audit hook refusing sockets and DNS (best effort)"}[mode],
        "files": {"full": "read-only chroot (system dirs + Python) as an unprivileged uid",
                  "userns": "ordinary file permissions of the calling user",
                  "audit": "ordinary file permissions of the calling user"}[mode],
        "processes": {"full": "RLIMIT_NPROC on a fresh per-run uid",
                      "userns": "RLIMIT_NPROC on the calling uid + audit hook refusing fork/exec",
                      "audit": "audit hook refusing fork/exec/signals"}[mode],
    }
