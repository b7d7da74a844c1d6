"""The warm launcher (stdlib only): one interpreter that forks a sandboxed child per execution.

Started by :mod:`posttrain.sandbox.zygote` as ``python -I -S _launcher.py --zygote FD``. Starting
an interpreter and importing what the launcher and the code verifier's harness use costs more
than most test programs take to run; here that is paid once. For each request (one JSON line on
the socket FD: the launch config, the run directory, the environment) the zygote forks; the
child starts a new session, puts the run's stdin/stdout/stderr files on fds 0-2, closes every
other descriptor (the zygote's socket included), replaces the environment, and then does what
a fresh launcher does: ``_launcher.enter`` (limits, namespaces, chroot, uid; or the audit
guard) and the user's code. The isolation is entered after the fork, by the child alone, so
every execution gets the same fresh namespaces, uid, chroot and rlimits as before.

The zygote answers ``{"id", "pid"}`` once a child is forked and ``{"id", "returncode"}`` when
it has reaped it (negative: killed by that signal, as ``subprocess`` reports). ``{"id",
"kill": true}`` (a timeout) SIGKILLs the run's process group. The zygote owns each child's
life: it kills what is left in the child's group *before* reaping the child, while the child's
pid (the group's id) cannot yet be reused. It stays
single-threaded (``unshare(CLONE_NEWUSER)`` in a child needs a single-threaded parent) and exits
when its socket closes; children set PR_SET_PDEATHSIG (full and userns modes) and die with it.
"""
import atexit
import collections  # noqa: F401 - the code harness imports it: loaded once, inherited
import json
import os
import select
import socket
import sys
import traceback  # noqa: F401 - as collections
import types  # noqa: F401 - as collections

import _launcher

MAX_FD = 1 << 16


def _exit_status(code):
    """The status ``sys.exit(code)`` gives an interpreter."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:  # noqa: BLE001, S110 - nothing left to report to
        pass
    return 1


def _child(request):
    """In the forked child: become the run's process, enter the sandbox, run the code; never returns."""
    try:
        os.setsid()
        run_dir = request["run_dir"]
        for fd, name, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY),
                                (2, "stderr", os.O_WRONLY)):
            opened = os.open(os.path.join(run_dir, name), flags)
            os.dup2(opened, fd)
            os.close(opened)
        os.closerange(3, MAX_FD)  # the zygote's socket and its other children's pidfds
        os.chdir(run_dir)
        os.environ.clear()
        os.environ.update(request["env"])
    except BaseException as exc:  # noqa: BLE001 - reported like any set-up failure
        os.write(2, f"posttrain-sandbox: setup failed in the zygote child: {exc!r}\n".encode())
        os._exit(_launcher.SETUP_FAILED)
    source = _launcher.enter(request["cfg"])
    status = 0
    try:
        _launcher._run_user_code(source)
    except SystemExit as exc:
        status = _exit_status(exc.code)
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001, S110 - e.g. the file-size limit hit while flushing
        pass
    os._exit(status)


def _kill_group(pid):
    if pid is None:
        return
    try:
        os.killpg(pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def _send(sock, message):
    sock.sendall(json.dumps(message).encode() + b"\n")


def serve(fd):
    sock = socket.socket(fileno=fd)
    children = {}  # pidfd -> (request id, pid)
    running = {}  # request id -> pid, until reaped
    buffer = b""
    while True:
        ready, _, _ = select.select([sock, *children], [], [])
        for item in ready:
            if item is sock:
                data = sock.recv(1 << 16)
                if not data:
                    os._exit(0)  # the parent is gone: so are we (children follow by PDEATHSIG)
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    if request.get("kill"):
                        _kill_group(running.get(request["id"]))
                        continue
                    pid = os.fork()
                    if pid == 0:
                        _child(request)
                    children[os.pidfd_open(pid)] = (request["id"], pid)
                    running[request["id"]] = pid
                    _send(sock, {"id": request["id"], "pid": pid})
            else:
                request_id, pid = children.pop(item)
                running.pop(request_id, None)
                os.close(item)
                _kill_group(pid)  # what the code left running; its leader is a zombie until reaped
                _, status = os.waitpid(pid, 0)
                _send(sock, {"id": request_id, "returncode": os.waitstatus_to_exitcode(status)})
