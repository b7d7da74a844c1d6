"""Report plots: the moving average drawn over noisy per-step RL curves, and the stage figure."""
from __future__ import annotations

import pytest

from posttrain.report.plots import moving_average, numeric_series, panel_keys, plot_stage


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0, 4.0, 6.0], 5) == pytest.approx([2.0, 3.0, 4.0])  # shorter than the window
    assert moving_average([], 3) == []


def test_long_curves_get_a_smoothed_line(tmp_path):
    records = [{"step": i, "reward": (i % 2) * 1.0} for i in range(1, 41)]
    path = plot_stage(records, ("reward",), "grpo", tmp_path / "grpo.png")
    assert path is not None and path.stat().st_size > 1000


def test_flat_metrics_take_no_panel_unless_key():
    records = [{"step": i, "reward": i * 0.1, "advantages/max": 2.47, "kl": 0.0, "entropy": 1.0 - i * 0.01,
                "clip_fraction": 0.0 if i < 3 else 0.1} for i in range(1, 6)]
    series = numeric_series(records)
    assert panel_keys(series, ("reward", "kl"), 6) == ["reward", "kl", "clip_fraction", "entropy"]
    assert panel_keys(series, ("reward", "kl"), 3) == ["reward", "kl", "clip_fraction"]
