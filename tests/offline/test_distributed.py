"""Two processes on CPU (gloo): plain DDP and DeepSpeed ZeRO-2/3 through the runner, for SFT and DPO.

Each case starts `accelerate launch` with two workers (~30-60 s on 2 cores, mostly start-up).
"""
from __future__ import annotations

import json

import pytest
import torch

import posttrain
from posttrain.errors import DataError

pytestmark = pytest.mark.slow


def _state_dict(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def _assert_trained_copy(output, model_dir):
    """Loads as a plain causal LM with the input's tensors (names and shapes), and the weights moved."""
    before, after = _state_dict(model_dir), _state_dict(output)
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)
    moved = max(float((before[k] - after[k]).abs().max()) for k in before)
    assert moved > 1e-4, f"weights did not change (max |diff| = {moved})"


@pytest.mark.parametrize("kind, zero, precompute", [("sft", 0, False), ("sft", 2, False), ("sft", 3, False),
                                                   ("dpo", 2, True), ("dpo", 3, False), ("dpo", 3, True)])
def test_two_processes_write_a_loadable_trained_checkpoint(tmp_path, capfd, tiny_model, sft_data,
                                                           small_preference_data, kind, zero, precompute):
    data = {"sft": {"path": sft_data["path"], "max_samples": 64}, "dpo": small_preference_data}[kind]
    extra = {"precompute_ref_log_probs": True} if precompute else {}
    if zero == 0:
        extra["report_to"] = ["tensorboard"]  # the tracker sink is opened by the rank-0 worker
    result = posttrain.run_stage(kind, model=str(tiny_model), data=data, max_steps=4, batch_size=4, lr=1e-3,
                                 logging_steps=1, run_dir=tmp_path, distributed={"processes": 2, "zero": zero}, **extra)
    assert result.status == "completed" and result.metrics["steps"] == 4
    _assert_trained_copy(result.output, tiny_model)
    stage_dir = result.output.parent
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == [1, 2, 3, 4]  # rank 0 alone writes metrics
    if zero == 0:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        assert len(list((stage_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 only
        events = EventAccumulator(str(stage_dir / "tensorboard"))
        events.Reload()
        assert [e.step for e in events.Scalars("loss")] == train_steps
    assert f"[{kind}] done at step 4/4" in (stage_dir / "launch.log").read_text()
    assert f"[{kind}] done at step 4/4" in capfd.readouterr().err  # rank 0's progress is echoed by the launcher
    assert (stage_dir / "accelerate.yaml").is_file()
    assert (stage_dir / "deepspeed.json").is_file() == bool(zero)
    assert (result.metrics["distributed/wrapper"], result.metrics["distributed/zero"]) == \
        ("DeepSpeedEngine" if zero else "DistributedDataParallel", zero)
    if kind == "dpo":
        assert 0.0 <= result.metrics["eval_reward_accuracy"] <= 1.0


def test_user_error_in_a_worker_reaches_the_caller_as_its_class(tmp_path, tiny_model):
    # Under the run folder, as an earlier stage's output would be: preflight leaves it to the stage
    # (a file outside it is rejected before anything starts), so the error arises in the workers.
    bad = tmp_path / "run" / "gen" / "bad.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": "not a list"}\n')
    with pytest.raises(DataError, match="line 2"):
        posttrain.run_stage("sft", model=str(tiny_model), data=str(bad), max_steps=1, run_dir=tmp_path / "run",
                            distributed={"processes": 2})


@pytest.mark.parametrize("zero, offload", [(2, "optimizer"), (3, "params")])
def test_cpu_offload_with_torch_adamw(tmp_path, tiny_model, sft_data, zero, offload):
    """Optimizer (and parameter) offload run with torch's AdamW, so no DeepSpeedCPUAdam JIT build."""
    result = posttrain.run_stage("sft", model=str(tiny_model), data={"path": sft_data["path"], "max_samples": 64},
                                 max_steps=3, batch_size=4, lr=1e-3, logging_steps=1, run_dir=tmp_path,
                                 distributed={"processes": 2, "zero": zero, "offload": offload})
    _assert_trained_copy(result.output, tiny_model)
    ds = json.loads((result.output.parent / "deepspeed.json").read_text())["zero_optimization"]
    assert ds["offload_optimizer"]["device"] == "cpu" and ("offload_param" in ds) == (offload == "params")
    assert "cpu_adam" not in (result.output.parent / "launch.log").read_text().lower()


def test_reward_model_ensemble_on_two_processes(tmp_path, tiny_model, small_preference_data):
    """Two members trained one after the other in the same worker processes (ZeRO-2), then scored on rank 0."""
    from posttrain.models.reward import load_reward_model

    result = posttrain.run_stage("reward_model", model=str(tiny_model), data=small_preference_data, ensemble=2,
                                 max_steps=3, batch_size=4, lr=1e-3, logging_steps=1, run_dir=tmp_path,
                                 distributed={"processes": 2, "zero": 2})
    assert result.metrics["members"] == 2 and result.metrics["steps"] == 6
    assert 0.0 <= result.metrics["eval_pairwise_accuracy"] <= 1.0
    scorer = load_reward_model(result.output)
    assert len(scorer) == 2
    rewards = scorer.member_scores(["What is 1 plus 2?"], ["3"])
    assert rewards.shape == (2, 1) and float(rewards[0, 0]) != float(rewards[1, 0])


@pytest.mark.parametrize("kind, zero", [("sft", 2), ("dpo", 3)])
def test_one_process_runs_under_deepspeed(tmp_path, tiny_model, sft_data, small_preference_data, kind, zero):
    """zero > 0 with one process is one launched DeepSpeed worker (it was silently plain torch)."""
    data = {"sft": {"path": sft_data["path"], "max_samples": 64}, "dpo": small_preference_data}[kind]
    result = posttrain.run_stage(kind, model=str(tiny_model), data=data, max_steps=3, batch_size=4, lr=1e-3,
                                 logging_steps=1, run_dir=tmp_path, distributed={"processes": 1, "zero": zero})
    _assert_trained_copy(result.output, tiny_model)
    assert "--num_processes 1" in (result.output.parent / "launch.log").read_text()
    assert (result.metrics["distributed/wrapper"], result.metrics["distributed/zero"]) == ("DeepSpeedEngine", zero)
