"""The docs/methods.md reference recipes run as their header commands do (shortened): grpo_raft
(both RL arms from one SFT model, RAFT's per-iteration data on disk with at most one kept answer
per prompt, each a right one), grpo_curriculum (three arms, the curriculum's metrics, held-out
accuracy per source), online_dpo (online, iterative and offline DPO arms) and prm (a PRM, its
outcome baseline, RL with and without process rewards)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHORT = ["stages.sft.max_steps=60", "stages.sft.save_steps=60", "stages.raft.total_steps=3",
         "stages.grpo.total_steps=2", "stages.eval_sft.samples=2", "stages.eval_raft.samples=2",
         "stages.eval_grpo.samples=2", "stages.eval_sft.pass_k=[1]", "stages.eval_raft.pass_k=[1]",
         "stages.eval_grpo.pass_k=[1]"]


def run_short(recipe: str, run_dir: Path, overrides: list[str]) -> dict[str, dict]:
    cmd = [sys.executable, "-m", "posttrain", "run", str(REPO / "recipes" / "reference" / recipe),
           "-s", f"run_dir={run_dir}", "--no-progress", *(x for o in overrides for x in ("-s", o))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=run_dir.parent, timeout=850, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert all(s["status"] == "completed" for s in stages.values()), manifest
    return stages


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~2 min on 2 quiet cores
def test_raft_reference_recipe_runs_and_records_each_iteration(tmp_path):
    run_dir = tmp_path / "raft"
    stages = run_short("grpo_raft.yaml", run_dir, SHORT)
    for name in ("eval_sft", "eval_raft", "eval_grpo"):
        assert 0.0 <= stages[name]["summary"]["eval/accuracy"] <= 1.0
    files = sorted((run_dir / "raft" / "rollouts").glob("step-*.rank0.jsonl"))
    assert [f.name[:11] for f in files] == ["step-000001", "step-000002", "step-000003"]
    for path in files:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == 16 * 8
        trained = [r for r in rows if r["trained"]]
        assert all(r["rewards"]["math"] == 1.0 for r in trained)  # reward_filter_min 1.0: right answers only
        assert len({r["group"] for r in trained}) == len(trained)  # at most one per prompt
    metrics = [json.loads(line) for line in (run_dir / "raft" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "reward" in m] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~1.5 min on 2 quiet cores
def test_curriculum_reference_recipe_runs_its_three_arms(tmp_path):
    short = ["stages.sft.max_steps=60", "stages.sft.save_steps=60",
             *(f"stages.{arm}.total_steps=3" for arm in ("uniform", "dump", "filter"))]
    stages = run_short("grpo_curriculum.yaml", tmp_path / "cur", short)
    for name in ("eval_sft_sources", "eval_uniform", "eval_dump", "eval_filter"):
        summary = stages[name]["summary"]
        assert {"eval/accuracy/2op", "eval/accuracy/3op", "eval/accuracy/4op"} <= summary.keys(), summary
    dump = [json.loads(line) for line in (tmp_path / "cur" / "dump" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in dump if "reward" in m]
    assert len(steps) == 3 and steps[0]["curriculum/p/4op"] == pytest.approx(1 / 3)
    filtered = [json.loads(line) for line in (tmp_path / "cur" / "filter" / "metrics.jsonl").read_text().splitlines()]
    assert all("curriculum/settled" in m for m in filtered if "reward" in m)


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~1.5 min on 2 quiet cores
def test_online_dpo_reference_recipe_runs_its_three_arms(tmp_path):
    """Online DPO, iterative DPO (reference refreshed after step 2) and offline DPO from one SFT model."""
    short = ["stages.sft.max_steps=60", "stages.sft.save_steps=60", "stages.online_dpo.total_steps=3",
             "stages.iterative_dpo.total_steps=3", "stages.iterative_dpo.ref_update_steps=2",
             "stages.offline_dpo.max_steps=4", "stages.offline_dpo.save_steps=4",
             *(f"stages.{e}.{k}" for e in ("eval_sft", "eval_online_dpo", "eval_iterative_dpo", "eval_offline_dpo")
               for k in ("samples=2", "pass_k=[1]"))]
    run_dir = tmp_path / "dpo"
    stages = run_short("online_dpo.yaml", run_dir, short)
    for name in ("eval_online_dpo", "eval_iterative_dpo", "eval_offline_dpo"):
        assert 0.0 <= stages[name]["summary"]["eval/accuracy"] <= 1.0
    iterative = [json.loads(line) for line in (run_dir / "iterative_dpo" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in iterative if "reward" in m]
    assert [m.get("reference_refreshed", 0.0) for m in steps] == [0.0, 1.0, 0.0]
    assert all(m["pairs/pairs"] > 0 and "loss/nll" in m for m in steps)  # sft_weight 1: the RPO term


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~2 min on 2 quiet cores
def test_prm_reference_recipe_trains_both_verifiers_and_the_three_rl_arms(tmp_path):
    """The PRM and the outcome baseline report held-out step accuracy; the RL arms with process
    rewards log them (reward/process) and the outcome-only arm does not."""
    evals = ("eval_rl_outcome", "eval_rl_score", "eval_rl_progress")
    short = ["stages.sft.max_steps=60", "stages.sft.save_steps=60", "stages.prm.max_steps=20", "stages.orm.max_steps=20",
             *(f"stages.{arm}.total_steps=2" for arm in ("rl_outcome", "rl_score", "rl_progress")),
             *(f"stages.{e}.{k}" for e in evals for k in ("samples=2", "pass_k=[1]"))]
    run_dir = tmp_path / "prm"
    stages = run_short("prm.yaml", run_dir, short)
    for name in ("prm", "orm"):
        summary = stages[name]["summary"]
        assert 0.0 <= summary["eval_step_accuracy"] <= 1.0 and "eval_step_accuracy/3" in summary
    for arm, has_process in (("rl_outcome", False), ("rl_score", True), ("rl_progress", True)):
        metrics = [json.loads(line) for line in (run_dir / arm / "metrics.jsonl").read_text().splitlines()]
        steps = [m for m in metrics if "reward" in m]
        assert len(steps) == 2 and all(("reward/process" in m) == has_process for m in steps), arm
