"""Trainer processes placed by Ray (distributed.launcher: ray) on a local two-node Ray cluster
(ray.cluster_utils.Cluster, each node with one `trainer` resource): the two ranks of a grpo stage
land on different nodes, form their gloo group across them and train what torchrun's two
processes train (bit for bit when run alone; within float rounding inside the full suite); a rank that dies stops the other at once and the stage names it;
bad Ray settings are ConfigErrors naming the key."""
from __future__ import annotations

import json
import time

import pytest
import ray
from ray_cluster import two_node_ray_cluster
from rl_loop_helpers import read_metrics, rl_recipe
from safetensors.torch import load_file

import posttrain
from posttrain.errors import ConfigError, StageFailed
from posttrain.runner import ray_launch
from posttrain.runner.ray_launch import rank_envs

KILLER = '''
import os


def dies_on_rank_1(completions, **_):
    if os.environ.get("RANK") == "1":
        os._exit(3)
    return [0.0 for _ in completions]
'''


@pytest.fixture(scope="module")
def cluster():
    yield from two_node_ray_cluster({"trainer": 1}, {"trainer": 1})


def _recipe(tiny_model_dir, prompts_file, rewards, run_dir, distributed):
    return rl_recipe(tiny_model_dir, prompts_file, rewards, run_dir, variant="grpo", minibatch_size=4,
                     grad_accum=2, distributed=distributed)


@pytest.mark.slow
def test_ranks_on_two_nodes_train_what_torchrun_trains(cluster, tiny_model_dir, prompts_file, rewards_file, tmp_path):
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    ray_run = posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards, tmp_path / "ray",
                                    {"processes": 2, "launcher": "ray", "ray_strategy": "STRICT_SPREAD",
                                     "ray_resources": {"CPU": 1, "trainer": 1}}), show_progress=False)
    placement = ray_run.stage("rl").summary  # the summary came back from rank 0's actor
    assert placement["distributed/processes"] == 2 and placement["distributed/wrapper"] == "DistributedDataParallel"
    work = tmp_path / "ray" / "rl"  # the finished stage's folder keeps what the launch wrote
    places = json.loads((work / "placement.json").read_text())
    assert [p["rank"] for p in places] == [0, 1] and places[0]["node"] != places[1]["node"]
    assert (work / "launch-rank1.log").is_file()
    torchrun = posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards, tmp_path / "torchrun",
                                     {"processes": 2, "launcher": "torchrun"}), show_progress=False)
    # Equal up to float rounding: alone they agree bit for bit; inside the full suite the two
    # launches' processes have differed in the 7th digit of the loss (the runner's environment,
    # which earlier tests change, reaches torchrun's processes and Ray's differently). Ranks that
    # drew the wrong prompt shares or skipped the gradient all-reduce differ by far more.
    ours, theirs = read_metrics(tmp_path / "ray"), read_metrics(tmp_path / "torchrun")
    for key in ("reward", "loss/policy", "grad_norm"):
        assert [r[key] for r in ours] == pytest.approx([r[key] for r in theirs], rel=1e-5, abs=1e-7), key
    a = load_file(ray_run.stage("rl").output / "model.safetensors")
    b = load_file(torchrun.stage("rl").output / "model.safetensors")
    # Adam can turn a rounding-level gradient difference into a sizeable step for a weight whose
    # gradient is ~0, so compare the whole update: the runs' difference is under 1% of its norm
    # (wrong prompt shares or a skipped all-reduce change most of it).
    start = load_file(tiny_model_dir / "model.safetensors")
    gap = sum(float((a[k] - b[k]).double().square().sum()) for k in a) ** 0.5
    update = sum(float((b[k] - start[k]).double().square().sum()) for k in b) ** 0.5
    assert update > 0 and gap < 0.01 * update, (gap, update)


@pytest.mark.slow
def test_ray_placed_rollout_workers_join_the_trainers_cluster(cluster, tiny_model_dir, prompts_file, rewards_file,
                                                             tmp_path):
    """Both roles placed by Ray: the trainer's actor (1 CPU and the head's `trainer`) starts a Ray
    placed rollout worker, which can only go to the other node's CPU, and trains asynchronously."""
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}], tmp_path / "run",
                       total_steps=3, distributed={"launcher": "ray", "ray_resources": {"CPU": 1, "trainer": 1}},
                       rollout={"mode": "server", "placement": "ray", "max_staleness": 1,
                                "worker_resources": {"CPU": 1}})
    posttrain.run(recipe, show_progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["rollout/staleness"] for r in records] == [0, 1, 1] and records[-1]["rollout/worker_busy_s"] > 0
    places = json.loads((tmp_path / "run" / "rl" / "placement.json").read_text())
    assert len(places) == 1


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_stage_naming_it(cluster, tiny_model_dir, prompts_file, tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    recipe = _recipe(tiny_model_dir, prompts_file, [{"function": f"{tmp_path / 'killer.py'}:dies_on_rank_1"}],
                     tmp_path / "run", {"processes": 2, "launcher": "ray", "ray_resources": {"CPU": 1, "trainer": 1}})
    with pytest.raises(StageFailed, match=r"failed in its Ray process of rank 1 \(its actor died"):
        posttrain.run(recipe, show_progress=False)
    deadline = time.monotonic() + 30  # Ray frees a removed placement group's bundles shortly after
    while ray.available_resources().get("trainer") != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("trainer") == 2  # both bundles given back: the other rank was stopped


@pytest.mark.slow
def test_bad_ray_settings_name_the_key(cluster, tiny_model_dir, prompts_file, rewards_file, tmp_path, monkeypatch):
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    monkeypatch.setattr(ray_launch, "PLACE_TIMEOUT_S", 3.0)
    with pytest.raises(ConfigError, match=r"distributed.ray_resources \{'GPU': 1.0\}: Ray could not place 2"):
        posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards, tmp_path / "a",
                              {"processes": 2, "launcher": "ray", "ray_resources": {"GPU": 1}}), show_progress=False)
    with pytest.raises(ConfigError, match=r"distributed.ray_address '127.0.0.1:1': no Ray head answers there"):
        posttrain.run(_recipe(tiny_model_dir, prompts_file, rewards, tmp_path / "b",
                              {"processes": 2, "launcher": "ray", "ray_address": "127.0.0.1:1"}), show_progress=False)


def test_gpu_ranks_see_their_nodes_gpus_and_pick_their_own():
    places = [{"node": "a", "ip": "10.0.0.1", "gpus": ["3"], "port": 7000},
              {"node": "a", "ip": "10.0.0.1", "gpus": ["1"], "port": 7001},
              {"node": "b", "ip": "10.0.0.2", "gpus": ["0"], "port": 7002}]
    envs = rank_envs(places)
    assert [(e["CUDA_VISIBLE_DEVICES"], e["LOCAL_RANK"]) for e in envs] == [("3,1", "0"), ("3,1", "1"), ("0", "0")]
    assert {e["MASTER_ADDR"] for e in envs} == {"10.0.0.1"} and [e["GROUP_RANK"] for e in envs] == ["0", "0", "1"]


def test_rank_envs_doctest():
    import doctest

    assert doctest.testmod(ray_launch).failed == 0
