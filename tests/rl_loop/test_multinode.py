"""Multi-node without Ray, for real: two `posttrain run` launches on this machine, as node 0 and
node 1 of one stage (gloo over 127.0.0.1, one process each, separate run directories as on two
machines without a shared filesystem), train what one launch of 2 processes trains: the same
weights bit for bit, the same logged metrics. One BLAS thread per process on both sides (the
launcher gives each process cores // processes threads, and other thread counts round
differently)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl
from rl_loop_helpers import rl_recipe
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TIMEOUT_S = 600  # per launch; a stuck rendezvous fails the test with the logs instead of hanging it


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _posttrain(recipe: Path, run_dir: Path, log: Path, *sets: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "posttrain", "run", str(recipe), "--no-progress", "-s", f"run_dir={run_dir}"]
    for item in sets:
        args += ["-s", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:  # a file, not a pipe nobody reads while the other node is waited on
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def _finish(proc: subprocess.Popen, log: Path, name: str) -> None:
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} did not finish in {TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{log.read_text()[-3000:]}"


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first: `posttrain run` then stops the launcher's worker processes (their own session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _metrics(stage_dir: Path) -> list[dict]:
    """The logged values a run determines (wall-clock times, speeds and memory dropped)."""
    timed = ("time", "tokens_per_s/", "memory/", "runtime", "samples_per_second", "steps_per_second")
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if not k.startswith(timed) and not k.endswith(timed)} for row in rows]


def _recipe(kind: str, tmp_path: Path, model_dir: Path, prompts_file: Path, rewards_file: Path) -> dict:
    if kind == "grpo":
        return rl_recipe(model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}],
                         tmp_path / "unused", variant="grpo", minibatch_size=4, grad_accum=2)
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i + 1}?"},
                          {"role": "assistant", "content": str(2 * i + 1)}]} for i in range(64)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    return {"name": "sft-test", "model": str(model_dir), "run_dir": str(tmp_path / "unused"),
            "stages": {"rl": {"kind": "sft", "data": str(data), "max_steps": 4, "batch_size": 4, "lr": 1e-3,
                              "logging_steps": 1}}}


@pytest.mark.parametrize("kind", ["sft", "grpo"])  # a TRL trainer, and posttrain's own RL loop
def test_two_nodes_train_what_two_processes_train(kind, tmp_path, tiny_model_dir, prompts_file, rewards_file):
    recipe = _recipe(kind, tmp_path, tiny_model_dir, prompts_file, rewards_file)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    single = _posttrain(path, tmp_path / "single", tmp_path / "single.log", "stages.rl.distributed.processes=2")
    try:
        _finish(single, tmp_path / "single.log", "2-process run")
    finally:
        _stop(single)
    port = _free_port()
    two_nodes = ["stages.rl.distributed.processes=1", "stages.rl.distributed.nodes=2",
                 "stages.rl.distributed.main_address=127.0.0.1", f"stages.rl.distributed.main_port={port}"]
    node1 = _posttrain(path, tmp_path / "node1", tmp_path / "node1.log", *two_nodes, "stages.rl.distributed.node_rank=1")
    node0 = _posttrain(path, tmp_path / "node0", tmp_path / "node0.log", *two_nodes)
    try:
        _finish(node0, tmp_path / "node0.log", "node 0")
        _finish(node1, tmp_path / "node1.log", "node 1")
    finally:
        _stop(node0)
        _stop(node1)

    [stage] = json.loads((tmp_path / "node1" / "manifest.json").read_text())["stages"]
    assert (stage["status"], stage["summary"]) == ("completed", {"node_rank": 1})  # node 0 wrote the model
    assert not (tmp_path / "node1" / "rl" / "model").exists()
    one, other = load_file(tmp_path / "single" / "rl" / "model" / "model.safetensors"), \
        load_file(tmp_path / "node0" / "rl" / "model" / "model.safetensors")
    assert one.keys() == other.keys()
    assert all((one[k] == other[k]).all() for k in one), "node 0's weights differ from the 2-process run's"
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert any(not (initial[k] == one[k]).all() for k in initial if k in one)  # it did train
    logged = _metrics(tmp_path / "node0" / "rl")
    assert [row["loss"] for row in logged if "loss" in row], logged
    assert logged == _metrics(tmp_path / "single" / "rl")
