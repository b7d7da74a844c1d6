"""The same loop under the launcher: 2 processes (DDP over gloo, DeepSpeed ZeRO-2/3) on CPU, torchrun, and one DeepSpeed process."""

import json

import pytest
import torch
from rl_loop_helpers import read_metrics, rl_recipe
from safetensors.torch import load_file

import posttrain

pytestmark = pytest.mark.slow




WRAPPER = {0: "DistributedDataParallel", 2: "DeepSpeedEngine", 3: "DeepSpeedEngine"}


def _run(tiny_model_dir, prompts_file, rewards_file, run_dir, distributed, **overrides):
    keys = {"minibatch_size": 4, "grad_accum": 2, **overrides}
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}],
                       run_dir, variant="grpo", advantage_scale="batch", distributed=distributed, **keys)
    result = posttrain.run(recipe, show_progress=False)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2]  # rank 0 logs once per step
    summary = result.stage("rl").summary
    assert summary["steps"] == 2
    assert (result.stage("rl").output / "model.safetensors").exists()
    return summary


@pytest.mark.parametrize("zero", [0, 2, 3])  # DeepSpeed is a hard dependency: no skip
def test_two_processes(tiny_model_dir, prompts_file, rewards_file, tmp_path, zero):
    summary = _run(tiny_model_dir, prompts_file, rewards_file, tmp_path / "run", {"processes": 2, "zero": zero})
    # what really ran the update, as the engine reports it (DDP or the DeepSpeed engine at that stage)
    assert (summary["distributed/processes"], summary["distributed/wrapper"], summary["distributed/zero"]) == (2, WRAPPER[zero], zero)
    assert summary["distributed/reference"] == ("partitioned" if zero == 3 else "replicated")  # grpo: kl_coef > 0
    if zero != 3:  # full replicas: the loop compared the processes' weights (it fails the stage when they differ)
        assert isinstance(summary["distributed/replica_checksum"], float)


@pytest.mark.parametrize("zero", [0, 3])
def test_two_processes_packed(tiny_model_dir, prompts_file, rewards_file, tmp_path, zero):
    """Packed micro-batches by a token budget: each process packs its own rows, the micro-batch
    count is agreed over processes (ZeRO-3 gathers collectively in every forward), replicas agree."""
    summary = _run(tiny_model_dir, prompts_file, rewards_file, tmp_path / "run", {"processes": 2, "zero": zero},
                   grad_accum=1, max_tokens_per_microbatch=48)
    assert summary["distributed/wrapper"] == WRAPPER[zero]
    if zero != 3:
        assert summary["distributed/replica_checksum"] is not None


def test_torchrun_launcher_runs_deepspeed(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """torchrun puts no accelerate DeepSpeed settings in the environment: the loop builds its own."""
    summary = _run(tiny_model_dir, prompts_file, rewards_file, tmp_path / "run",
                   {"processes": 2, "zero": 2, "launcher": "torchrun"})
    assert (summary["distributed/wrapper"], summary["distributed/zero"]) == ("DeepSpeedEngine", 2)
    assert isinstance(summary["distributed/replica_checksum"], float)


def test_one_process_zero3_with_param_offload_lora_and_cosine(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """zero and offload are honoured with one process (one launched worker), not silently dropped;
    LoRA trains under ZeRO-3 with the adapter-free base as reference, and the hf engine's own copy
    (ZeRO-3 partitions the live module) gets the merged weights: the sync probe sees no gap."""
    recipe = rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}],
                       tmp_path / "run", variant="grpo", total_steps=3, lr=5e-2, kl_coef=0.05, lr_scheduler="cosine",
                       lora={"r": 4, "alpha": 8}, distributed={"processes": 1, "zero": 3, "offload": "params"})
    result = posttrain.run(recipe, show_progress=False)
    summary = result.stage("rl").summary
    assert (summary["distributed/processes"], summary["distributed/wrapper"]) == (1, "DeepSpeedEngine")
    assert (summary["distributed/zero"], summary["distributed/offload"]) == (3, "params")
    assert json.loads((tmp_path / "run" / "rl" / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3
    records = read_metrics(tmp_path / "run")
    lrs = [r["lr"] for r in records]
    assert lrs[0] > lrs[1] > lrs[2] > 0  # cosine decay over the run's optimizer steps
    for record in records:
        assert record["sync/probe_gap"] < 1e-4, record
    assert records[-1]["kl"] > 0  # the adapters moved the policy away from the base
    merged = load_file(result.stage("rl").output / "model.safetensors")  # a plain model: LoRA merged, shards gathered
    base = load_file(tiny_model_dir / "model.safetensors")
    assert set(merged) == set(base) and all(merged[k].shape == base[k].shape for k in base)
    assert any(not torch.equal(merged[k], base[k]) for k in base)


@pytest.mark.parametrize(("zero", "transport"), [(0, "copy"), (3, "copy"), (3, "broadcast")])
def test_two_processes_with_asynchronous_rollout_workers(tiny_model_dir, prompts_file, rewards_file, tmp_path, zero,
                                                         transport):
    """Each of 2 training processes drives its own rollout worker, one step ahead; under ZeRO-3 the
    weights reach the workers gathered (every process passes over the model once per sync), into
    their shared copies or streamed over each worker's own channel, and the replicas still agree."""
    run_dir = tmp_path / "run"
    summary = _run(tiny_model_dir, prompts_file, rewards_file, run_dir, {"processes": 2, "zero": zero},
                   rollout={"mode": "server", "max_staleness": 1, "weight_transport": transport}, sync_probe_prompts=2)
    records = read_metrics(run_dir)
    assert [r["rollout/staleness"] for r in records] == [0, 1]
    assert all(r["sync/probe_gap"] < 1e-4 for r in records[1:])
    assert summary["distributed/wrapper"] == WRAPPER[zero]

