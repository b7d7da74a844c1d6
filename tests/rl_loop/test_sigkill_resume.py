"""A `posttrain run` killed with SIGKILL after a checkpoint continues its reward curve on rerun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from rl_loop_helpers import rl_recipe

pytestmark = pytest.mark.slow

TOTAL_STEPS = 8


def start_run(recipe_path, log_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "posttrain", "run", str(recipe_path), "--no-progress"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for_checkpoint(run_dir, process, timeout_s=300):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        done = sorted(run_dir.glob(".work/rl-*/checkpoints/checkpoint-*/COMPLETE"))
        if done:
            return done[0].parent
        if process.poll() is not None:
            pytest.fail(f"the run exited (status {process.returncode}) before writing a checkpoint")
        time.sleep(0.2)
    pytest.fail("no checkpoint within the time limit")


def test_sigkill_then_rerun_continues(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    run_dir = tmp_path / "run"
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}], run_dir,
                       total_steps=TOTAL_STEPS, save_steps=2, variant="dapo")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    log = tmp_path / "log.txt"
    process = start_run(recipe_path, log)
    checkpoint = wait_for_checkpoint(run_dir, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = int(checkpoint.name.split("-")[1])
    assert killed_at < TOTAL_STEPS

    rerun = start_run(recipe_path, log)
    assert rerun.wait(timeout=600) == 0, log.read_text()[-3000:]
    records = [json.loads(line) for line in (run_dir / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
    stage = json.loads((run_dir / "rl" / "stage.json").read_text())
    # a later checkpoint may have completed between our poll and the kill
    assert int(stage["resumed_from"].rsplit("checkpoint-", 1)[1]) >= killed_at
    assert "resuming from checkpoint-" in log.read_text()
