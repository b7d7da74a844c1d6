"""Ray placement of the rollout workers (rollout.placement: ray) on a local two-node Ray cluster
(ray.cluster_utils.Cluster): the head node has a custom resource `trainer`, the second `rollout`.
The worker lands on the other node than the trainer, serves the trainer's weights through the
object store (or its own weight channel), is replaced when its process is killed, and a whole RL
stage trains with it."""
import os
import signal

import pytest
import ray
import torch
from ray_cluster import two_node_ray_cluster

from posttrain.errors import ConfigError
from posttrain.models import load_model
from posttrain.rl.rollout import SamplingConfig, make_engine
from posttrain.rl.rollout.ray_service import RayRolloutService, connect

SAMPLING = SamplingConfig(n=4, max_tokens=8, seed=5)


@pytest.fixture(scope="module")
def cluster():
    yield from two_node_ray_cluster({"trainer": 1}, {"rollout": 1})


@pytest.mark.parametrize("transport", ["copy", "broadcast"])
def test_worker_on_the_other_node_serves_the_trainers_weights(cluster, tiny_dir, tokenizer, transport):
    """copy: through the object store; broadcast: over the worker's gloo channel to this node's
    address (the restarted actor gets a new channel and the live weights)."""
    policy = load_model(str(tiny_dir))
    service = RayRolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, threads=1, timeout_s=120,
                                worker_resources={"CPU": 1, "rollout": 1}, trainer_resources={"trainer": 1},
                                weight_transport=transport)
    try:
        assert service.nodes[0] != ray.get_runtime_context().get_node_id()
        assert (service.workers[0].channel is not None) == (transport == "broadcast")
        colocated = make_engine("hf", str(tiny_dir), tokenizer, model=policy)
        assert service.generate(["Item 1:"], SAMPLING).completion_ids == colocated.generate(["Item 1:"], SAMPLING).completion_ids
        with torch.no_grad():
            for param in policy.parameters():
                param.add_(0.05 * torch.randn_like(param))
        pending = service.submit_generate(["Item 1:"], SAMPLING)
        service.sync_weights(policy, version=2, probe=[[3, 4, 5, 6]])
        assert service.collect(pending).metadata["weight_version"] == 0  # the load waited behind it
        assert service.load_results()[0]["probe"] == colocated.score([[3, 4, 5, 6]])
        expected = colocated.generate(["Item 1:"], SAMPLING).completion_ids
        pid = ray.get(service.workers[0].process.ready.remote())["pid"]
        pending = service.submit_generate(["Item 1:"], SAMPLING)
        os.kill(pid, signal.SIGKILL)
        batch = service.collect(pending)  # a new actor in the same bundle, from the last synced weights
        assert batch.metadata["weight_version"] == 2 and batch.completion_ids == expected
        assert service.stats()["rollout/worker_restarts"] == 1
        assert service.workers[0].node == service.nodes[0]
    finally:
        service.close()


def test_trainer_bundle_on_another_node_is_refused(cluster, tiny_dir, tokenizer):
    with pytest.raises(ConfigError, match=r"rollout.trainer_resources \{'rollout': 1\}: Ray reserved them on node"):
        RayRolloutService("hf", str(tiny_dir), tokenizer, policy=load_model(str(tiny_dir)), workers=1,
                          worker_resources={"CPU": 1}, trainer_resources={"rollout": 1})


def test_unplaceable_workers_stop_naming_the_resources(cluster, tiny_dir, tokenizer):
    with pytest.raises(ConfigError, match=r"Ray could not place 1 rollout worker\(s\) of \{'GPU': 1\}"):
        RayRolloutService("hf", str(tiny_dir), tokenizer, policy=load_model(str(tiny_dir)), workers=1,
                          worker_resources={"GPU": 1}, start_timeout_s=3)


def test_rl_stage_trains_with_ray_placed_workers(cluster, tiny_dir, tmp_path):
    import posttrain

    (tmp_path / "rw.py").write_text("def ones(completions, **_):\n    return [float('a' in c) for c in completions]\n")
    data = tmp_path / "p.jsonl"
    data.write_text("".join(f'{{"prompt": "Item {i}:"}}\n' for i in range(16)))
    stage = {"kind": "grpo", "data": str(data), "rewards": [{"function": f"{tmp_path}/rw.py:ones"}],
             "prompts_per_step": 2, "group_size": 2, "max_tokens": 4, "total_steps": 3, "lr": 1e-3,
             "rollout": {"mode": "server", "placement": "ray", "max_staleness": 1, "ray_address": cluster.address,
                         "worker_resources": {"CPU": 1, "rollout": 1}}}
    result = posttrain.run({"name": "ray", "model": str(tiny_dir), "run_dir": str(tmp_path / "run"),
                            "stages": {"rl": stage}}, show_progress=False)
    assert result.stage("rl").summary["steps"] == 3
    assert ray.is_initialized()  # the stage joined the test's Ray and left it running


def test_unreachable_address_is_a_config_error_in_seconds():
    with pytest.raises(ConfigError, match=r"rollout.ray_address '127.0.0.1:1': no Ray head answers there"):
        connect("127.0.0.1:1")
