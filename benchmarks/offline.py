"""SFT tokens/s and DPO pairs/s: posttrain's stages against TRL 1.16 used directly, same data and model.

    .venv/bin/python benchmarks/offline.py            # 3 repetitions of each, alternating
    .venv/bin/python benchmarks/offline.py --reps 1 --steps 10   # quick look

Workload: the `base` model (~3.4M parameters, `posttrain init-model --size base`), bundled arithmetic
data, fp32 on CPU. SFT: batch 32, max_length 64, `--steps` optimizer steps. DPO: batch 16 pairs,
beta 0.1, sigmoid loss. Time is TRL's own `train_runtime` (the training loop only) in both variants,
so imports and model loading are excluded alike; peak RSS is each child process's maximum. TRL's
configs default to gradient checkpointing; posttrain's stages default it off (`gradient_checkpointing`
key), so the TRL child turns it off too: the same computation on both sides (with TRL's default on,
posttrain measured 1.31x / 1.20x TRL's speed with ~80 MB more peak RSS).
posttrain runs its stage through the public API (the same path as `posttrain run`), so the ratio
shows our overhead on top of TRL (metrics forwarding, checkpoint layout).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import alternate, child_result, machine, markdown_table, median  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SFT_DATA = REPO / "data" / "arithmetic" / "sft.jsonl"
DPO_DATA = REPO / "data" / "arithmetic" / "preference.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "offline.md"


def _last(rows: list[dict], key: str) -> float:
    return next((r[key] for r in reversed(rows) if key in r), 0.0)


def child_posttrain(workload: str, model: str, steps: int) -> None:
    import posttrain

    with tempfile.TemporaryDirectory() as tmp:
        if workload == "sft":
            out = posttrain.sft(model=model, data=str(SFT_DATA), max_steps=steps, batch_size=32, max_length=64,
                                lr=1e-3, logging_steps=steps, save_steps=10_000, run_dir=f"{tmp}/run")
        else:
            out = posttrain.run_stage("dpo", model=model, data=str(DPO_DATA), max_steps=steps, batch_size=16,
                                      max_length=64, lr=1e-5, beta=0.1, logging_steps=steps, save_steps=10_000,
                                      run_dir=f"{tmp}/run")
        rows = [json.loads(line) for line in (out.run_dir / workload / "metrics.jsonl").read_text().splitlines()]
    child_result(train_runtime=_last(rows, "train_runtime"), num_tokens=_last(rows, "num_tokens"), steps=steps)


def child_trl(workload: str, model_path: str, steps: int) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    common = dict(max_steps=steps, learning_rate=1e-3 if workload == "sft" else 1e-5, logging_steps=steps,
                  save_strategy="no", report_to="none", bf16=False, use_cpu=True, disable_tqdm=True,
                  max_length=64, seed=0, gradient_checkpointing=False)
    with tempfile.TemporaryDirectory() as tmp:
        if workload == "sft":
            from trl import SFTConfig, SFTTrainer

            data = load_dataset("json", data_files=str(SFT_DATA), split="train")
            args = SFTConfig(output_dir=tmp, per_device_train_batch_size=32, assistant_only_loss=True, **common)
            trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        else:
            from trl import DPOConfig, DPOTrainer

            data = load_dataset("json", data_files=str(DPO_DATA), split="train")
            args = DPOConfig(output_dir=tmp, per_device_train_batch_size=16, beta=0.1, **common)
            trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        result = trainer.train()
    child_result(train_runtime=result.metrics["train_runtime"], num_tokens=_last(trainer.state.log_history, "num_tokens"),
                 steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, metavar=("IMPL", "WORKLOAD", "MODEL", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workloads", nargs="+", default=["sft", "dpo"])
    args = parser.parse_args()
    if args.child:
        impl, workload, model, steps = args.child
        (child_posttrain if impl == "posttrain" else child_trl)(workload, model, int(steps))
        return

    from posttrain.models import init_model

    header = machine()
    with tempfile.TemporaryDirectory() as tmp:
        model = str(init_model(Path(tmp) / "base", size="base", seed=0))
        rows = []
        for workload in args.workloads:
            print(f"{workload}: {args.reps} reps x {args.steps} steps", file=sys.stderr)
            variants = {impl: [impl, workload, model, str(args.steps)] for impl in ("posttrain", "trl")}
            results = alternate(Path(__file__), variants, args.reps)
            if any("error" in r for runs in results.values() for r in runs):
                raise SystemExit(f"{workload}: a variant failed: {results}")
            if workload == "sft":  # TRL counts the non-padding tokens it trained on
                unit = "tokens/s"
                speed = {impl: median(results[impl], "num_tokens") / median(results[impl], "train_runtime") for impl in variants}
            else:
                unit = "pairs/s"
                speed = {impl: args.steps * 16 / median(results[impl], "train_runtime") for impl in variants}
            rows.append([workload, unit,
                         f"{speed['posttrain']:.0f}", f"{speed['trl']:.0f}", f"{speed['posttrain'] / speed['trl']:.3f}",
                         f"{median(results['posttrain'], 'peak_rss_mb'):.0f}", f"{median(results['trl'], 'peak_rss_mb'):.0f}"])
    table = markdown_table(["workload", "unit", "posttrain", "TRL 1.16", "ratio", "posttrain peak RSS MB", "TRL peak RSS MB"], rows)
    text = f"Machine: {header}. {args.reps} reps x {args.steps} steps, medians, {time.strftime('%Y-%m-%d')}.\n\n{table}\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
