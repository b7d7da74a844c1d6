"""A stage killed with SIGKILL mid-training resumes from its last checkpoint on the next run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest


def _posttrain(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "posttrain", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
def test_sigkill_mid_stage_resumes_and_finishes(tmp_path, tiny_model_dir, chat_sft_file):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
# posttrain run r.yaml
name: resume
model: {tiny_model_dir}
run_dir: {tmp_path / 'run'}
stages:
  sft:
    kind: sft
    data: {chat_sft_file}
    max_steps: 60
    batch_size: 4
    save_steps: 10
    logging_steps: 2
""")
    proc = _posttrain("run", recipe, "--no-progress", cwd=tmp_path)
    deadline = time.time() + 240
    checkpoints = None
    while time.time() < deadline and proc.poll() is None:
        checkpoints = sorted((tmp_path / "run" / ".work").glob("sft-*/checkpoints/checkpoint-*/trainer_state.json"))
        if checkpoints:
            break
        time.sleep(0.2)
    assert checkpoints, f"no checkpoint appeared; output:\n{proc.stdout.read() if proc.poll() is not None else ''}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "sft").exists()  # never promoted

    done = _posttrain("run", recipe, "--no-progress", cwd=tmp_path)
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 0, out
    assert "resuming from checkpoint-" in out
    record = json.loads((tmp_path / "run" / "sft" / "stage.json").read_text())
    assert record["status"] == "completed" and record["resumed_from"].split("checkpoint-")[1].isdigit()
    assert int(record["resumed_from"].rsplit("-", 1)[1]) >= 10
    assert record["summary"]["steps"] == 60
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 60
    assert len(set(steps)) >= len(steps) - 1  # no rows logged twice across the kill (the final eval shares step 60)
