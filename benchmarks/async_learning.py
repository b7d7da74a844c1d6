"""Does asynchronous training learn as well? The quickstart's GRPO stage, synchronous against
server mode with max_staleness 1, from the same SFT checkpoint, over seeds.

    make quickstart                                   # writes runs/quickstart/sft/model
    .venv/bin/python benchmarks/async_learning.py     # seeds 0 1 2, both modes, one after another

Both runs take the quickstart recipe's `grpo` and `eval_grpo` stages as they are (DAPO, with
dynamic sampling); the only difference is `rollout: {mode: server, max_staleness: 1, threads: 1}`
with the trainer on one torch thread (the 2 cores shared between trainer and worker). Reports held-out greedy accuracy, sampled pass@1 and pass@8 after GRPO, the
mean staleness and the GRPO stage's seconds; writes benchmarks/results/async_learning.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine, markdown_table

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.yaml"
SFT = REPO / "runs" / "quickstart" / "sft" / "model"
RESULTS = REPO / "benchmarks" / "results" / "async_learning.md"
MODES = {"sync": {}, "async": {"rollout": {"mode": "server", "max_staleness": 1, "threads": 1}}}


def recipe(seed: int, mode: str, run_dir: Path) -> dict:
    stages = yaml.safe_load(RECIPE.read_text())["stages"]
    grpo, evaluation = stages["grpo"], stages["eval_grpo"]
    grpo.update(model=str(SFT), data=str(REPO / "recipes" / grpo["data"]), seed=seed,
                **MODES[mode])
    evaluation["data"] = str(REPO / "recipes" / evaluation["data"])
    return {"name": f"async-learning-{mode}-{seed}", "run_dir": str(run_dir),
            "stages": {"grpo": grpo, "eval_grpo": evaluation}}


def run_one(seed: int, mode: str, root: Path) -> dict:
    run_dir = root / f"{mode}-seed{seed}"
    path = root / f"{mode}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(recipe(seed, mode, run_dir), sort_keys=False))
    env = None
    if mode == "async":  # the trainer's torch threads (the worker's come from rollout.threads)
        import os

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "posttrain", "run", str(path), "--no-progress"], check=True, env=env)
    grpo = json.loads((run_dir / "grpo" / "stage.json").read_text())
    evaluation = json.loads((run_dir / "eval_grpo" / "stage.json").read_text())["summary"]
    records = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    staleness = [r.get("rollout/staleness", 0.0) for r in records if "reward" in r]
    return {"seed": seed, "mode": mode, "greedy": evaluation["eval/accuracy"], "pass@1": evaluation["eval/pass@1"],
            "pass@8": evaluation["eval/pass@8"], "staleness": statistics.mean(staleness),
            "seconds": grpo["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default=str(REPO / "runs" / "async_learning"))
    args = parser.parse_args()
    if not (SFT / "config.json").exists():
        parser.error(f"needs the quickstart's SFT checkpoint {SFT}: run `make quickstart` first")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    header = f"{machine()}; started {time.strftime('%Y-%m-%d %H:%M')}"
    rows = [run_one(seed, mode, root) for seed in args.seeds for mode in MODES]
    table = [[str(r["seed"]), r["mode"], f"{r['greedy']:.3f}", f"{r['pass@1']:.3f}", f"{r['pass@8']:.3f}",
              f"{r['staleness']:.2f}", f"{r['seconds']:.0f}"] for r in rows]
    means = {mode: {k: statistics.mean(r[k] for r in rows if r["mode"] == mode) for k in ("greedy", "pass@1", "pass@8")}
             for mode in MODES}
    for mode, m in means.items():
        table.append(["mean", mode, f"{m['greedy']:.3f}", f"{m['pass@1']:.3f}", f"{m['pass@8']:.3f}", "", ""])
    gap = means["async"]["greedy"] - means["sync"]["greedy"]
    text = (f"Machine: {header}. GRPO (the quickstart's, DAPO) from {SFT.relative_to(REPO)}.\n\n"
            + markdown_table(["seed", "mode", "greedy", "pass@1", "pass@8", "mean staleness", "grpo s"], table)
            + f"\n\nAsync minus sync, mean greedy accuracy: {gap * 100:+.1f} points.\n")
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
