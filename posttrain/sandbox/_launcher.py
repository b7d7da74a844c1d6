"""Child side of one sandboxed execution (stdlib only; run as ``python -I -S _launcher.py CONFIG``).

The parent (:mod:`posttrain.sandbox.runner`) starts this file in a new session, with a scrubbed
environment and stdin/stdout/stderr redirected to files it owns. This process applies the
limits, enters the isolation the config asks for, then executes the untrusted code in this same
interpreter. We do the set-up here instead of in ``subprocess``'s ``preexec_fn`` because the
verifier pool calls the sandbox from threads, and ``preexec_fn`` is documented as unsafe in a
multi-threaded parent (it may deadlock between fork and exec).

Modes (the parent picks the strongest that works on the machine, see ``runner.probe_mode``):

* ``full`` (root or CAP_SYS_ADMIN): new network namespace (only a down loopback: no network),
  new mount namespace with a read-only chroot holding only system directories, the Python
  installation and a size-limited tmpfs scratch at ``/sandbox``; then the process drops to a
  fresh unprivileged uid/gid, so RLIMIT_NPROC is enforced (the kernel does not enforce it for
  root) and counts only this run's processes, and signals to the parent fail with EPERM.
* ``userns`` (unprivileged user namespaces): new user + network namespace; files and processes
  rely on ordinary permissions plus the audit guard below.
* ``audit``: no kernel isolation available; a PEP 578 audit hook refuses sockets, DNS, signals
  to other processes, subprocesses/exec and ctypes. Best effort only.

Exit status 125 with a ``posttrain-sandbox:`` line on stderr means set-up failed.

``python -I -S _launcher.py --zygote FD`` starts the warm launcher instead (``_zygote.py``): one
interpreter that has imported all this once and forks a child per execution, the child doing
exactly what this file does after start-up.
"""
import json
import os
import resource
import sys
import traceback

SETUP_FAILED = 125
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
DEVICES = ("null", "zero", "random", "urandom")


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    return libc, ctypes


def _call(libc_fn, ctypes, what, *args):
    if libc_fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(lib, src, target, fstype, flags, data=None):
    libc, ctypes = lib
    enc = [None if s is None else s.encode() for s in (src, target, fstype, data)]
    _call(libc.mount, ctypes, f"mount {target}", enc[0], enc[1], enc[2], flags, enc[3])


def _set_limits(cfg):
    cpu = int(cfg["cpu_s"])
    limits = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        (resource.RLIMIT_AS, cfg["memory_bytes"], cfg["memory_bytes"]),
        (resource.RLIMIT_FSIZE, cfg["file_bytes"], cfg["file_bytes"]),
        (resource.RLIMIT_NOFILE, 256, 256),
    ]
    if cfg["nproc"] is not None:
        limits.append((resource.RLIMIT_NPROC, cfg["nproc"], cfg["nproc"]))
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))


def _bind_readonly(lib, path, target):
    os.makedirs(target, mode=0o755, exist_ok=True)
    _mount(lib, path, target, None, MS_BIND | MS_REC)
    # A bind mount ignores MS_RDONLY on creation: it takes a second, remount call.
    _mount(lib, None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _build_root(lib, cfg):
    """Populate a fresh tmpfs at cfg['root'] with what the interpreter needs, then chroot into it."""
    root = cfg["root"]
    _mount(lib, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in SYSTEM_DIRS + tuple(cfg["keep_paths"]):
        if not os.path.lexists(path) or os.path.lexists(root + path):
            continue
        if os.path.islink(path) and path in SYSTEM_DIRS:  # usr-merge links such as /bin -> usr/bin
            os.symlink(os.readlink(path), root + path)
        else:
            _bind_readonly(lib, path, root + path)
    os.makedirs(root + "/dev", mode=0o755)
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            open(root + "/dev/" + name, "w").close()
            _mount(lib, "/dev/" + name, root + "/dev/" + name, None, MS_BIND)
    os.mkdir(root + "/sandbox")
    _mount(lib, "tmpfs", root + "/sandbox", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['scratch_bytes']},mode=0700,uid={cfg['uid']},gid={cfg['gid']}")
    os.symlink("/sandbox/tmp", root + "/tmp")
    os.chroot(root)
    os.chdir("/sandbox")


def _enter_full(cfg):
    lib = _libc()
    libc, ctypes = lib
    _call(libc.unshare, ctypes, "unshare(CLONE_NEWNS|CLONE_NEWNET)", CLONE_NEWNS | CLONE_NEWNET)
    # Without MS_PRIVATE our mounts would propagate back to the host's mount table.
    _mount(lib, None, "/", None, MS_REC | MS_PRIVATE)
    _build_root(lib, cfg)
    _call(libc.prctl, ctypes, "prctl(NO_NEW_PRIVS)", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.setgroups([])
    os.setgid(cfg["gid"])
    os.setuid(cfg["uid"])
    # Set after setuid: a credential change clears the parent-death signal.
    _call(libc.prctl, ctypes, "prctl(PDEATHSIG)", PR_SET_PDEATHSIG, 9, 0, 0, 0)
    for sub in ("tmp", "home"):
        os.mkdir(sub, 0o700)


def _enter_userns(cfg):
    libc, ctypes = _libc()
    _call(libc.unshare, ctypes, "unshare(CLONE_NEWUSER|CLONE_NEWNET)", CLONE_NEWUSER | CLONE_NEWNET)
    _call(libc.prctl, ctypes, "prctl(PDEATHSIG)", PR_SET_PDEATHSIG, 9, 0, 0, 0)
    os.chdir(cfg["scratch"])


def _install_guard(block_network):
    """Refuse what the kernel could not isolate (PEP 578 hook: cannot be removed once added)."""
    me = os.getpid()
    refused = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
               "os.fork", "os.forkpty", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
               "sys.setprofile", "sys.settrace"}
    if block_network:
        refused |= {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
                    "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr",
                    "socket.sendto"}

    def guard(event, args):
        if event in refused or (event in ("os.kill", "os.killpg") and args[0] not in (me, 0)):
            raise PermissionError(f"posttrain sandbox: {event} is not allowed")

    sys.addaudithook(guard)


def _run_user_code(source):
    sys.argv = ["main.py"]
    with open("main.py", "w") as f:  # so tracebacks can show source lines
        f.write(source)
    code = compile(source, "main.py", "exec")
    namespace = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    try:
        exec(code, namespace)  # noqa: S102 - running untrusted code is this process's purpose
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - mirror the interpreter: traceback, status 1
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        sys.stderr.flush()
        sys.exit(1)


def enter(cfg):
    """Read the code, apply the limits and enter the isolation of ``cfg``; return the code.

    Any failure is reported on stderr and ends the process with SETUP_FAILED: nothing runs.
    """
    try:
        with open(cfg["code_path"]) as f:
            source = f.read()
        _set_limits(cfg)
        if cfg["mode"] == "full":
            _enter_full(cfg)
        elif cfg["mode"] == "userns":
            _enter_userns(cfg)
            _install_guard(block_network=False)
        else:
            os.chdir(cfg["scratch"])
            _install_guard(block_network=True)
    except BaseException as exc:  # noqa: BLE001 - any set-up failure must be reported, not run
        sys.stderr.write(f"posttrain-sandbox: setup failed in mode {cfg['mode']!r}: {exc!r}\n")
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
    return source


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    _run_user_code(enter(cfg))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I left it out
        import _zygote

        _zygote.serve(int(sys.argv[2]))
    else:
        main()
