"""Peak memory of a span of code: this process's resident set (Linux) and CUDA allocations.

``with PeakMemory() as peak: ...`` then ``peak.rss_mb`` / ``peak.cuda_mb`` (None where the
platform cannot measure it). The resident-set peak is the kernel's own high-water mark (VmHWM),
reset at the start of the span through /proc/self/clear_refs, so it is the true peak of the span,
not a sample. Child processes (vLLM's engine core, verifier workers) are not counted.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
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


# glibc's mallopt parameters (malloc.h; mallopt(3)), and the values its self-adjusting thresholds
# settle at once a process has freed blocks of 32 MiB (its cap): mmap above 32 MiB, trim above 64 MiB
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_SETTLED_MMAP_THRESHOLD, _SETTLED_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 32 * 2**20, 64 * 2**20, 65536
_RETAINED_TRIM_THRESHOLD = 2**30


def _glibc():
    """The C library when it is glibc with ``mallopt`` (Linux), else None."""
    import ctypes

    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (AttributeError, OSError, ValueError):  # no confstr name (not glibc), no libc.so.6
        return None


@contextmanager
def retained_heap(enabled: bool = True) -> Iterator[bool]:
    """While open, the C allocator keeps freed memory for reuse instead of handing it back to the
    kernel; yields whether that applies (glibc on Linux, ``enabled``).

    torch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (at most
    32 MiB) with a fresh ``mmap`` and unmaps them on free, and trims the heap's free top: every
    forward/backward then faults its activations in again, page by page. Measured on W1 (256 x 88
    tokens, benchmarks/README.md): ~1M minor faults and 2-5 s of system time per update of 4-6 s.
    Inside this context ``mallopt(M_MMAP_MAX, 0)`` puts every block on the heap and
    ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` keeps its top, so freed pages are reused, as CUDA's caching
    allocator reuses device memory; the price is a resident set that stays at its high-water mark
    and heap fragmentation on top of it.

    On exit ``malloc_trim(0)`` returns the free memory to the kernel, and the thresholds are set to
    what glibc's self-adjusting ones settle at in a training process (mmap above 32 MiB, trim above
    64 MiB). They stay fixed for the rest of the process: any ``mallopt`` call ends glibc's
    adjustment, and overrides ``MALLOC_*`` environment settings. Memory allocated inside and still
    referenced (optimizer state the caller keeps) stays on the heap."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _RETAINED_TRIM_THRESHOLD))
    try:
        yield applied
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)
        libc.malloc_trim(0)
