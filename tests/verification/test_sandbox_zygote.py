"""The warm launcher: a zygote that dies is detected, its runs fail (never pass), and it restarts."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from posttrain.sandbox import SandboxError, run_python, sandbox_info
from posttrain.sandbox import zygote as zygote_module
from posttrain.verification import VerifierPool, load_verifier

MODE = sandbox_info()["mode"]


def _zygote_pid() -> int:
    run_python("pass", launcher="zygote")  # make sure one is running
    return zygote_module._zygotes[MODE].process.pid


def _kill_zygote_soon(delay_s: float) -> threading.Thread:
    pid = _zygote_pid()

    def kill():
        time.sleep(delay_s)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_children_see_only_their_own_descriptors():
    """The zygote's socket (and other runs' pidfds) are closed before the code runs."""
    code = ("import os\nopen_fds = []\nfor fd in range(3, 256):\n    try:\n        os.fstat(fd)\n"
            "        open_fds.append(fd)\n    except OSError:\n        pass\nprint(open_fds)")
    out = run_python(code, launcher="zygote")
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_a_killed_zygote_fails_the_run_in_flight_and_is_restarted():
    restarts = zygote_module.restarts["count"]
    killer = _kill_zygote_soon(0.5)
    start = time.monotonic()
    with pytest.raises(SandboxError, match="sandbox zygote died"):
        run_python("import os, time\nprint(os.getpid())\ntime.sleep(30)", timeout_s=20,
                   launcher="zygote")
    killer.join()
    assert time.monotonic() - start < 10
    after = run_python("print('fresh')", launcher="zygote")
    assert after.stdout == "fresh\n" and zygote_module.restarts["count"] == restarts + 1


def test_a_code_item_running_when_the_zygote_dies_is_an_error_not_a_pass():
    code = load_verifier("code")
    solution = "```python\nimport time\ndef f():\n    time.sleep(3)\n    return 1\n```"
    with VerifierPool(code, timeout_s=30, workers=1, max_error_rate=1.0) as pool:
        killer = _kill_zygote_soon(1.0)
        scored = pool.run([solution], {"tests": ["assert f() == 1"]})
        killer.join()
        assert scored.outcomes[0].status == "error" and scored.scores == [0.0]
        assert "zygote died" in scored.outcomes[0].error
        again = pool.run([solution.replace("time.sleep(3)", "pass")], {"tests": ["assert f() == 1"]})
        assert again.scores == [1.0]


def test_fresh_and_zygote_launchers_report_alike():
    code = "import sys\nprint(input() * 2)\nsys.stderr.write('e')\nsys.exit(4)"
    runs = [run_python(code, stdin="ab\n", launcher=name) for name in ("fresh", "zygote")]
    assert {(r.returncode, r.stdout, r.stderr, r.killed_by) for r in runs} == {(4, "abab\n", "e", None)}
    with pytest.raises(ValueError, match="launcher='warm'"):
        run_python("pass", launcher="warm")


def test_a_broken_zygote_socket_fails_the_run_instead_of_hanging():
    """A request that cannot be sent marks the zygote dead (under its own lock: no deadlock)."""
    run_python("pass", launcher="zygote")
    zygote = zygote_module._zygotes[MODE]
    ours, peer = socket.socketpair()
    peer.close()
    original, zygote._sock = zygote._sock, ours  # sends now fail with EPIPE; the reader waits on
    outcome: list[BaseException | None] = []

    def start():
        try:
            zygote.start_run({}, "/nonexistent", {})
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - what the test inspects
            outcome.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(timeout=10)
    try:
        assert not thread.is_alive(), "start_run hung on a broken zygote socket"
        assert isinstance(outcome[0], zygote_module.ZygoteDied) and "stopped taking requests" in str(outcome[0])
        assert not zygote.alive
    finally:
        zygote.process.kill()
        original.close()
    assert run_python("print(2)", launcher="zygote").stdout == "2\n"  # a new zygote took over
