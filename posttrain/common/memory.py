"""Peak memory of a span of code: this process's resident set (Linux) and CUDA allocations.

``with PeakMemory() as peak: ...`` then ``peak.rss_mb`` / ``peak.cuda_mb`` (None where the
platform cannot measure it). The resident-set peak is the kernel's own high-water mark (VmHWM),
reset at the start of the span through /proc/self/clear_refs, so it is the true peak of the span,
not a sample. Child processes (vLLM's engine core, verifier workers) are not counted.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (VmHWM: peak resident set, VmRSS: resident set now)."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS to the current RSS (proc(5))
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager measuring the peak memory of its body (see the module docstring)."""

    def __init__(self) -> None:
        self.rss_mb: float | None = None
        self.cuda_mb: float | None = None
        self._rss = False

    def __enter__(self) -> PeakMemory:
        self._rss = _reset_hwm()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        kb = _status_kb("VmHWM") if self._rss else None
        self.rss_mb = None if kb is None else kb / 1024
        if torch.cuda.is_available():
            self.cuda_mb = torch.cuda.max_memory_allocated() / 2**20


def current_rss_mb() -> float | None:
    """This process's resident set now (Linux), MB."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024
