"""Engine plumbing that needs no running vLLM: scratch folder, limits, finish reasons, bench."""
from __future__ import annotations

import json
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest

from posttrain.rl.rollout import bench
from posttrain.rl.rollout.vllm_engine import _config_max_len, _default_sync_root, _finish_reason


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="this machine has no /dev/shm")
def test_sync_root_prefers_ram_when_it_fits(tiny_dir, monkeypatch):
    assert _default_sync_root(str(tiny_dir)) == "/dev/shm"
    usage = namedtuple("usage", "total used free")
    # A 64 MB container /dev/shm cannot hold twice a checkpoint larger than 32 MB.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(64 << 20, 0, 64 << 20))
    big = tiny_dir.parent / "big"
    big.mkdir(exist_ok=True)
    with open(big / "model.safetensors", "wb") as handle:
        handle.truncate(40 << 20)  # sparse: takes no disk
    assert _default_sync_root(str(big)) == tempfile.gettempdir()


def test_config_max_len_reads_the_checkpoint(tiny_dir):
    assert _config_max_len(str(tiny_dir)) == 1024


def test_finish_reason_accepts_only_stop_and_length():
    assert (_finish_reason("stop"), _finish_reason("length")) == ("stop", "length")
    with pytest.raises(RuntimeError, match="abort"):
        _finish_reason("abort")


def test_bench_hf_reports_consistent_numbers(capsys):
    result = bench.main(["--engine", "hf", "--size", "tiny", "--prompts", "3", "--n", "2",
                         "--max-tokens", "4", "--repeats", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["completions"] == 6 and 6 <= result["tokens"] <= 24
    # generate_s is rounded to 1 ms and the rate to 0.1/s: bound the rate both ways.
    seconds = result["generate_s"]
    assert 6 / (seconds + 0.0005) - 0.05 <= result["completions_per_s"] <= \
        6 / max(seconds - 0.0005, 1e-9) + 0.05
    assert result["sync_s"] >= 0


def test_bench_prompts_are_seeded():
    assert bench.make_prompts(3, seed=1) == bench.make_prompts(3, seed=1)
    assert bench.make_prompts(3, seed=1) != bench.make_prompts(3, seed=2)
