"""Shared benchmark plumbing: run each variant in a fresh subprocess, alternate, take medians.

Every measurement runs in its own Python process so that peak RSS (from `os.wait4`) belongs to that
variant alone and no variant inherits another's warm caches. Variants alternate within each
repetition (A B A B ...), so slow drift of a shared machine hits all of them alike.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0]
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, load average {load:.1f} at start"


def run_child(script: Path, args: list[str], timeout: int = 1800) -> dict[str, Any]:
    """Run `script --child ARGS`; it prints one JSON line last. Adds peak_rss_mb (this child only)."""
    proc = subprocess.Popen([sys.executable, str(script), "--child", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    # communicate() already reaped the child; its rusage is in RUSAGE_CHILDREN only in aggregate, so
    # children report their own peak via resource.getrusage(RUSAGE_SELF) (see child_result).
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def child_result(**values: Any) -> None:
    """Print the child's JSON result line, with its own peak RSS (ru_maxrss includes its children)."""
    import resource

    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({**values, "peak_rss_mb": round(peak_kb / 1024, 1)}), flush=True)


def alternate(script: Path, variants: dict[str, list[str]], reps: int,
              rep_args: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Run every variant once per repetition, in turn; ``rep_args``: append the repetition's index
    to the child's arguments (a benchmark that seeds each repetition differently)."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for rep in range(reps):
        for name, args in variants.items():
            try:
                result = run_child(script, args + [str(rep)] if rep_args else args)
            except RuntimeError as err:  # one variant crashing (e.g. a baseline's known bug) is a result too
                lines = [line for line in str(err).splitlines() if line.strip()]
                result = {"error": lines[-1][:200] if lines else "failed"}
            results[name].append(result)
            print(f"  rep {rep + 1}/{reps} {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return results


def timed(obj: Any, method: str) -> list[float]:
    """Wrap obj.method to record each call's wall time; returns the (growing) list of times."""
    inner, times = getattr(obj, method), []

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    setattr(obj, method, wrapper)
    return times


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
