"""Server mode and asynchronous training (rollout: {mode: server, max_staleness: k}) end to end on a
tiny model with hf rollout workers: k = 0 equals the colocated loop, k = 1 trains on batches exactly
one update old and never older, a killed worker is restarted mid-run, a resumed run takes the
prompts the killed one had requested ahead again, and bad settings exit 2 naming the key."""
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from rl_loop_helpers import read_metrics, rl_recipe, run_killed_then_resumed
from transformers import AutoTokenizer

import posttrain
from posttrain.models import load_model
from posttrain.rl.loop.dist import Processes
from posttrain.rl.loop.metrics import PhaseTimer
from posttrain.rl.loop.pipeline import RolloutPipeline, stale
from posttrain.rl.loop.sampling import PromptStream
from posttrain.rl.rewards import RewardChannelConfig, RewardScorer
from posttrain.rl.rollout.service import RolloutService
from posttrain.stages.grpo import GRPOConfig

THREADS = torch.get_num_threads()  # the workers run as many as the trainer, so k = 0 reproduces it exactly


def recipe(tiny_model_dir, prompts_file, rewards_file, run_dir, **stage):
    return rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:vowel_fraction"}], run_dir,
                     sync_probe_prompts=2, **stage)


def test_the_service_keeps_k_weight_copies_for_max_staleness_k():
    from posttrain.rl.loop.config import RolloutConfig
    from posttrain.rl.loop.trainer import weight_copies

    assert [weight_copies(RolloutConfig(mode="server", max_staleness=k)) for k in range(5)] == [1, 1, 2, 3, 4]
    assert weight_copies(RolloutConfig(mode="server", max_staleness=3, weight_transport="broadcast")) == 1


def test_stale_is_more_than_k_updates_behind():
    assert not stale(4, 5, 1) and stale(3, 5, 1) and not stale(5, 5, 0) and stale(4, 5, 0)
    with pytest.raises(ValueError, match="cannot precede"):
        stale(6, 5, 1)


def test_server_mode_synchronous_equals_colocated(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """max_staleness 0 in server mode: the same rewards and losses, bit for bit, as the colocated loop."""
    colocated = recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path / "colocated", total_steps=3)
    posttrain.run(colocated, show_progress=False)
    theirs = read_metrics(tmp_path / "colocated")
    for transport in ("copy", "broadcast"):  # shared memory, or each worker's gloo channel
        server = recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path / transport, total_steps=3,
                        rollout={"mode": "server", "threads": THREADS, "weight_transport": transport})
        posttrain.run(server, show_progress=False)
        ours = read_metrics(tmp_path / transport)
        for key in ("reward", "loss/policy", "grad_norm", "response_length/mean"):
            assert [r[key] for r in ours] == [r[key] for r in theirs], (transport, key)
        assert all(r["sync/probe_gap"] < 1e-5 for r in ours)  # the workers serve the trainer's weights


def test_async_trains_on_batches_at_most_k_updates_old(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    run_dir = tmp_path / "run"
    posttrain.run(recipe(tiny_model_dir, prompts_file, rewards_file, run_dir, total_steps=4,
                         rollout={"mode": "server", "max_staleness": 1}), show_progress=False)
    records = read_metrics(run_dir)
    assert [r["rollout/staleness"] for r in records] == [0, 1, 1, 1]  # step t samples with weights t - 2
    assert records[-1]["rollout/staleness_max"] == 1 and sum(r["rollout/dropped_batches"] for r in records) == 0
    assert all(r["sync/probe_gap"] < 1e-5 for r in records[1:])  # compared one sync later
    for key in ("time/rollout_wait", "rollout/worker_idle_s", "rollout/worker_busy_s", "time/update"):
        assert key in records[-1], key
    report = (run_dir / "report.md").read_text()  # the report shows the time split and the staleness
    assert "trainer: logprobs" in report and "rollout_wait" in report and "Rollout workers (summed over workers): busy" in report
    assert "Staleness (updates between sampling and training): mean 0.75, max 1; dropped batches 0." in report


@pytest.mark.parametrize("k", [2, 3])
def test_async_k_trains_k_updates_behind_and_probes_every_sync(tiny_model_dir, prompts_file, rewards_file, tmp_path, k):
    """max_staleness k: k weight copies, so a sync passes the loads still queued behind the next
    batches; each sync's probe is compared once its load is collected (k syncs later, the last
    ones at the end), and every one matches the trainer's log-probs."""
    run_dir = tmp_path / "run"
    total = k + 3
    posttrain.run(recipe(tiny_model_dir, prompts_file, rewards_file, run_dir, total_steps=total,
                         rollout={"mode": "server", "max_staleness": k}), show_progress=False)
    records = read_metrics(run_dir)
    assert [r["rollout/staleness"] for r in records] == [*range(k), k, k, k]
    assert sum(r["rollout/dropped_batches"] for r in records) == 0
    probed = [r["step"] for r in records if "sync/probe_gap" in r]
    assert probed == [k + 1, k + 2, k + 3] and all(r["sync/probe_gap"] < 1e-5 for r in records if "sync/probe_gap" in r)


def test_async_with_dynamic_sampling_samples_extra_rounds_fresh(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """DAPO (dynamic sampling) asynchronously: the first round comes from the batch requested ahead,
    further rounds sample at once with the current weights; the step trains as many groups."""
    run_dir = tmp_path / "run"
    posttrain.run(rl_recipe(tiny_model_dir, prompts_file, [{"function": f"{rewards_file}:even_prompts_constant"}], run_dir,
                            variant="dapo", total_steps=3, rollout={"mode": "server", "max_staleness": 1}),
                  show_progress=False)
    records = read_metrics(run_dir)
    assert [r["rollout/staleness"] for r in records] == [0, 1, 1]
    assert any(r["sampling/rounds"] > 1 for r in records) and any(r["sampling/groups_dropped"] > 0 for r in records)


@pytest.mark.slow
def test_async_with_vllm_workers(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    """The vllm engine in a worker process (in-process vLLM there), asynchronously: it trains, and
    the probe the worker scores after each load matches the trainer's float32 log-probs."""
    run_dir = tmp_path / "run"
    posttrain.run(recipe(tiny_model_dir, prompts_file, rewards_file, run_dir, total_steps=3, engine="vllm",
                         rollout={"mode": "server", "max_staleness": 1}), show_progress=False)
    records = read_metrics(run_dir)
    assert [r["rollout/staleness"] for r in records] == [0, 1, 1]
    assert all(r["sync/probe_gap"] < 1e-4 for r in records[1:])


NAGGING = """
import os

from posttrain.agents import Environment, StepResult


class Nagging(Environment):
    def reset(self, row):
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, text):
        info = {"nags": 1, "in_trainer": float(os.getpid() == int(os.environ["TRAINER_PID"]))}
        return StepResult(messages=[{"role": "user", "content": "More."}], reward=0.25, info=info)
"""


def test_async_episodes_are_played_by_the_workers(tiny_model_dir, prompts_file, rewards_file, tmp_path, monkeypatch):
    """An environment with max_staleness 1: the workers play whole multi-turn episodes (the
    environment loaded in each from its file; not one step in the trainer's process), and the
    loop trains on them one update late."""
    (tmp_path / "nag.py").write_text(NAGGING)
    monkeypatch.setenv("TRAINER_PID", str(os.getpid()))  # the stage runs in this process
    run_dir = tmp_path / "run"
    environment = {"name": f"{tmp_path / 'nag.py'}:Nagging", "max_turns": 3, "max_episode_tokens": 32}
    posttrain.run(recipe(tiny_model_dir, prompts_file, rewards_file, run_dir, total_steps=3, environment=environment,
                         stop=list("abcdefghijklmnopqrstuvwxyz "),
                         rollout={"mode": "server", "workers": 2, "max_staleness": 1}), show_progress=False)
    records = read_metrics(run_dir)
    assert [r["rollout/staleness"] for r in records] == [0, 1, 1]
    assert all(r["episode/turns"] > 1 and r["episode/nags"] > 0 and r["episode/in_trainer"] == 0 for r in records)
    assert all(r["sync/probe_gap"] < 1e-5 for r in records[1:]) and "loss/policy" in records[-1]


AGENT = """
import os

from openai import OpenAI


def nag(row, base_url):
    client = OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": row["prompt"]}]
    for _ in range(2):
        text = client.chat.completions.create(model="policy", messages=messages).choices[0].message.content
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "More."}]
    return {"reward": 0.25, "info": {"in_trainer": float(os.getpid() == int(os.environ["TRAINER_PID"]))}}
"""


def test_async_openai_agent_episodes_train_in_the_workers(tiny_model_dir, prompts_file, rewards_file, tmp_path,
                                                          monkeypatch):
    """Agent code written against the OpenAI API (environment openai_agent), max_staleness 1: each
    worker runs the agents against its own bridge and plays their calls as episodes; the loop
    trains on them one update late."""
    (tmp_path / "agent.py").write_text(AGENT)
    monkeypatch.setenv("TRAINER_PID", str(os.getpid()))
    run_dir = tmp_path / "run"
    environment = {"name": "openai_agent", "options": {"agent": f"{tmp_path / 'agent.py'}:nag"}, "max_turns": 3,
                   "max_episode_tokens": 48}
    posttrain.run(recipe(tiny_model_dir, prompts_file, rewards_file, run_dir, total_steps=3, environment=environment,
                         stop=list("abcdefghijklmnopqrstuvwxyz "),
                         rollout={"mode": "server", "workers": 2, "max_staleness": 1}), show_progress=False)
    records = read_metrics(run_dir)
    assert [r["rollout/staleness"] for r in records] == [0, 1, 1]
    assert all(r["episode/turns"] > 1 and r["episode/in_trainer"] == 0 for r in records)
    assert all(r["episode/env_errors"] == 0 for r in records) and "loss/policy" in records[-1]


def test_pipeline_drops_a_batch_older_than_k_and_samples_it_again(tiny_model_dir, prompts_file, rewards_file):
    """A batch requested before two syncs is two versions behind at its step: with k = 1 it is never
    trained on; the same prompts are sampled again with the current weights."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = load_model(str(tiny_model_dir))
    config = GRPOConfig.model_validate({"kind": "grpo", "data": str(prompts_file), "prompts_per_step": 2, "group_size": 2,
                                        "max_tokens": 4, "rewards": [{"function": f"{rewards_file}:vowel_fraction"}],
                                        "rollout": {"mode": "server", "max_staleness": 1}, "overlap_scoring": False})
    service = RolloutService("hf", str(tiny_model_dir), tokenizer, policy=policy, workers=1, timeout_s=60)
    session = SimpleNamespace(config=config, plan=config.batch_plan(1), procs=Processes(), episodes=None, engine=service,
                              stream=PromptStream([{"prompt": f"Item {i}:"} for i in range(32)], seed=0),
                              scorer=RewardScorer([RewardChannelConfig.model_validate(c) for c in config.model_dump()["rewards"]]))
    pipeline = RolloutPipeline(max_staleness=1, total_steps=10)
    try:
        pipeline.collect(session, 1, PhaseTimer())           # requests step 2 with version 0
        pipeline.ahead[3] = pipeline._request(session, 3)     # a step requested too early, also with version 0
        state_after_step_2 = pipeline.ahead[2].draw_state
        for version in (1, 2):
            service.sync_weights(policy, version=version)
        batch, stats = pipeline.collect(session, 2, PhaseTimer())
        assert stats["rollout/staleness"] == 1 and stats["rollout/dropped_batches"] == 0
        assert pipeline.draw_state == state_after_step_2  # what a checkpoint of step 2 records
        prompts = [row["prompt"] for row in pipeline.ahead[3].rows]
        batch, stats = pipeline.collect(session, 3, PhaseTimer())
        assert stats["rollout/dropped_batches"] == 1 and stats["rollout/staleness"] == 0
        assert [row["prompt"] for row in batch.rows[::2]] == prompts
    finally:
        service.close()


@pytest.mark.parametrize("transport", ["copy", "broadcast"])
def test_killed_worker_mid_run_is_restarted_and_the_stage_finishes(tiny_model_dir, prompts_file, rewards_file,
                                                                   tmp_path, monkeypatch, transport):
    from posttrain.rl.loop import trainer

    real_step = trainer.train_step

    def kill_during_step_2(session, step):
        if step == 2:
            pid = session.engine.workers[0].process.pid
            threading.Timer(0.05, os.kill, (pid, signal.SIGKILL)).start()
        return real_step(session, step)

    monkeypatch.setattr(trainer, "train_step", kill_during_step_2)
    run_dir = tmp_path / "run"
    posttrain.run(recipe(tiny_model_dir, prompts_file, rewards_file, run_dir, total_steps=4, max_tokens=24,
                         rollout={"mode": "server", "max_staleness": 1, "weight_transport": transport}),
                  show_progress=False)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert sum(r["rollout/worker_restarts"] for r in records) == 1
    assert max(r["rollout/staleness"] for r in records) <= 1


def test_resumed_async_run_samples_the_prompts_requested_ahead_again(tiny_model_dir, prompts_file, rewards_file,
                                                                     tmp_path, monkeypatch):
    """Killed at step 4 after the checkpoint of step 2 (step 3's batch was requested ahead and
    used, step 4's was in flight): the rerun's steps train on the same prompts as an uninterrupted
    run, none skipped, none half-used."""
    stage = {"total_steps": 5, "save_steps": 2, "save_rollouts": True, "rollout": {"mode": "server", "max_staleness": 1}}
    run_killed_then_resumed(recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path / "killed", **stage),
                            kill_at=4, monkeypatch=monkeypatch)
    posttrain.run(recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path / "straight", **stage), show_progress=False)

    def prompts(run_dir):
        return [[json.loads(line)["prompt"] for line in path.read_text().splitlines()]
                for path in sorted((run_dir / "rl" / "rollouts").glob("step-*.jsonl"))]

    killed, straight = prompts(tmp_path / "killed"), prompts(tmp_path / "straight")
    assert len(killed) == len(straight) == 5 and killed == straight
    assert [r["step"] for r in read_metrics(tmp_path / "killed")] == [1, 2, 3, 4, 5]


def test_async_curriculum_draws_ahead_from_what_it_learned_before(tiny_model_dir, rewards_file, tmp_path,
                                                                   monkeypatch):
    """A DUMP curriculum with max_staleness 1: step t+1's prompts are drawn before step t is observed,
    so step 2 draws with the untouched (uniform) probabilities that the synchronous run has already
    moved; each step logs the stats of its own draw. Killed at step 4 after the checkpoint of step
    2, the resumed run ends with the uninterrupted run's draw count and the observations of every
    trained step (none counted twice, none lost)."""
    from rl_loop_helpers import write_jsonl

    data = write_jsonl(tmp_path / "sources.jsonl", [{"prompt": f"Item {i}:", "source": f"s{i % 2}"} for i in range(16)])
    rewards = [{"function": f"{rewards_file}:vowel_fraction"}]
    curriculum = {"sampler": "dump", "dump_temperature": 0.01}

    def run(name, **rollout):
        stage = {"total_steps": 5, "save_steps": 2, "keep_checkpoints": 5, "curriculum": curriculum,
                 "rollout": {"mode": "server", **rollout}}
        return rl_recipe(tiny_model_dir, data, rewards, tmp_path / name, **stage)

    from posttrain.rl.loop import checkpoint, trainer

    saved: dict[tuple[str, int], dict] = {}  # (run, step) -> the stream state its checkpoint recorded

    def recording(session, step):
        checkpoint.save_checkpoint(session, step)
        state = json.loads((session.ctx.checkpoint_dir / f"checkpoint-{step}" / checkpoint.STATE_FILE).read_text())
        saved[session.ctx.work_dir.parent.parent.name, step] = state["stream"]  # run_dir/.work/NAME-HASH

    monkeypatch.setattr(trainer, "save_checkpoint", recording)
    posttrain.run(run("sync"), show_progress=False)
    posttrain.run(run("async", max_staleness=1), show_progress=False)
    sync, asynchronous = read_metrics(tmp_path / "sync"), read_metrics(tmp_path / "async")
    assert asynchronous[1]["curriculum/p/s0"] == asynchronous[0]["curriculum/p/s0"] == 0.5
    assert sync[1]["curriculum/p/s0"] != 0.5
    assert [r["rollout/staleness"] for r in asynchronous] == [0, 1, 1, 1, 1]
    for r in asynchronous:
        assert r["curriculum/drawn/s0"] + r["curriculum/drawn/s1"] == pytest.approx(1.0)

    run_killed_then_resumed(run("killed", max_staleness=1), kill_at=4, monkeypatch=monkeypatch)

    straight, resumed = saved["async", 4], saved["killed", 4]
    assert resumed["draws"] == straight["draws"] == 4 * 4  # prompts_per_step 4: step 4's prompts drawn, no more
    assert sum(resumed["counts"].values()) == sum(straight["counts"].values()) == 4 * 4 * 4  # 4 steps x 4 prompts x G 4
    assert [r["step"] for r in read_metrics(tmp_path / "killed")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("override", "message"), [
    ("stages.rl.rollout.max_staleness=-1", "stages.rl.rollout.max_staleness"),
    ("stages.rl.rollout.max_staleness=1", "rollout.max_staleness 1 needs rollout.mode: server"),
    ("stages.rl.rollout.mode=servers", "stages.rl.rollout.mode"),
    ("stages.rl.rollout.weight_transport=broadcast",
     "rollout.weight_transport broadcast sends weights to rollout workers: it needs rollout.mode: server"),
    ("stages.rl.rollout.weight_transport=nccl", "stages.rl.rollout.weight_transport"),
])
def test_bad_rollout_settings_exit_2_naming_the_key(tiny_model_dir, prompts_file, rewards_file, tmp_path,
                                                    override, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tiny_model_dir, prompts_file, rewards_file, tmp_path / "run")))
    proc = subprocess.run([sys.executable, "-m", "posttrain", "validate", str(path), "-s", override],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_async_refuses_what_it_cannot_replay(prompts_file, rewards_file):
    base = {"kind": "grpo", "data": str(prompts_file), "rewards": [{"function": f"{rewards_file}:vowel_fraction"}],
            "rollout": {"mode": "server", "max_staleness": 2}}
    with pytest.raises(ValueError, match="rollout.max_staleness 2 with dynamic_sampling"):
        GRPOConfig.model_validate({**base, "dynamic_sampling": True})
    with pytest.raises(ValueError, match="decoupled_ppo already weights"):
        GRPOConfig.model_validate({**base, "policy_loss": "decoupled_ppo", "mismatch_correction": "tis"})
    assert GRPOConfig.model_validate({**base, "policy_loss": "decoupled_ppo"}).mismatch_correction == "none"


def test_the_documented_command_validates():
    """docs/distributed.md's command: grpo_math (DAPO, dynamic sampling) in server mode, one step ahead."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "posttrain", "validate", str(root / "recipes" / "grpo_math.yaml"),
                           "-s", "stages.grpo.rollout.mode=server", "-s", "stages.grpo.rollout.max_staleness=1"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
