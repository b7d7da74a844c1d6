"""Peak memory of a span: the kernel's high-water mark, reset at the span's start."""
import torch

from posttrain.common.memory import PeakMemory
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
