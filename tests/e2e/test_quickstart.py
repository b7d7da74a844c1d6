"""recipes/quickstart.yaml runs end to end as the README's main command does, then skips when rerun."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~12.5 min on 2 quiet cores; CI's 900 s default cut it off
def test_quickstart_runs_end_to_end_and_reruns_cached(tmp_path):
    run_dir = tmp_path / "quickstart"
    cmd = [sys.executable, "-m", "posttrain", "run", str(REPO / "recipes" / "quickstart.yaml"),
           "-s", f"run_dir={run_dir}", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(s["status"] == "completed" for s in manifest["stages"]), manifest
    stages = {s["name"]: s for s in manifest["stages"]}
    for name in ("pretrain", "sft"):
        summary = stages[name]["summary"]
        assert summary["last_loss"] < summary["first_loss"] * 0.7, (name, summary)
    # SFT visibly learns the task (seed 0, locked stack: greedy 0.677; chance is ~0); both evals report
    # greedy accuracy and sampled pass@k, which the report charts across stages
    sft, rl = stages["eval_sft"]["summary"], stages["eval_grpo"]["summary"]
    assert sft["eval/accuracy"] > 0.15, sft
    for name in ("eval_sft", "eval_grpo"):
        assert {"eval/accuracy", "eval/pass@1", "eval/pass@8"} <= set(stages[name]["summary"]), stages[name]
    # GRPO raises what it optimises, the reward of its training prompts (seed 0 on AMD EPYC: 0.31 in steps
    # 1-20 -> 0.36 in steps 131-150), and does not lose what SFT had on held-out questions. The held-out
    # gain depends on the CPU: on the Intel Xeon of 2026-12-06 SFT is weaker and GRPO gains (greedy 0.257 ->
    # 0.440, pass@1 0.098 -> 0.136); on AMD EPYC SFT is strong (greedy 0.677) and the gain is within seed
    # noise (2026-12-03: pass@1 0.175 -> 0.194; 2026-12-07, after sampling-stream changes acting as a new
    # seed: pass@1 0.182 -> 0.186, greedy 0.677 -> 0.610). README and docs/quickstart.md have the tables.
    rewards = [json.loads(line)["reward"] for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()
               if line.strip() and "reward" in json.loads(line)]
    assert sum(rewards[-20:]) / 20 > sum(rewards[:20]) / 20 + 0.02, rewards
    assert rl["eval/pass@1"] >= sft["eval/pass@1"] - 0.01, (sft, rl)
    assert rl["eval/pass@8"] >= sft["eval/pass@8"] - 0.02, (sft, rl)
    assert rl["eval/accuracy"] >= sft["eval/accuracy"] - 0.1, (sft, rl)
    report = (run_dir / "report.md").read_text()
    assert "| sft | sft | completed |" in report and (run_dir / "plots" / "sft.png").exists()

    start = time.time()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.time() - start < 60
    assert all(s["status"] == "cached" for s in json.loads((run_dir / "manifest.json").read_text())["stages"])
