"""Peak memory of a span: the kernel's high-water mark, reset at the span's start; the retained heap."""
import ctypes

import pytest
import torch

from posttrain.common.memory import PeakMemory, retained_heap
from posttrain.rl.loop.metrics import PhaseTimer


def test_peak_rss_sees_a_freed_allocation_and_resets_for_the_next_span():
    with PeakMemory() as big:
        block = torch.ones(200 * 2**20, dtype=torch.uint8)  # 200 MB touched, then freed
        del block
    with PeakMemory() as small:
        pass
    assert big.rss_mb is not None and small.rss_mb is not None
    assert big.rss_mb - small.rss_mb > 150  # the first span's peak held the block; the second's did not


def test_phase_timer_records_the_peak_of_memory_phases_only():
    timer = PhaseTimer()
    with timer("update"):
        block = torch.ones(100 * 2**20, dtype=torch.uint8)
        del block
    with timer("score"):
        pass
    assert set(timer.memory) == {"memory/update/rss_mb_max"} and timer.memory["memory/update/rss_mb_max"] > 100
    assert timer.seconds.keys() == {"update", "score"}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mapped_mb_while_holding(mb: int) -> float:
    """How much glibc's separately mmapped blocks grow (MiB) while a tensor of ``mb`` MiB is alive."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    before = libc.mallinfo2().hblkhd
    block = torch.ones(mb * 2**18)
    mapped = (libc.mallinfo2().hblkhd - before) / 2**20
    del block
    return mapped


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")  # glibc >= 2.33
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="mallopt and mallinfo2 are glibc's (>= 2.33)")
def test_retained_heap_keeps_large_blocks_on_the_heap_and_restores_the_defaults():
    """Before, a 64 MiB tensor is its own mmap (unmapped on free, faulted in again next time);
    inside the context it comes from the heap, which keeps it; afterwards blocks above the settled
    32 MiB threshold are mapped again."""
    assert _mapped_mb_while_holding(64) >= 64
    with retained_heap() as applied:
        assert applied
        assert _mapped_mb_while_holding(64) < 1
    assert _mapped_mb_while_holding(64) >= 64
    with retained_heap(enabled=False) as applied:
        assert not applied
        assert _mapped_mb_while_holding(64) >= 64
