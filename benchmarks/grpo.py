"""GRPO step throughput: posttrain (hf and vllm engines) against TRL 1.16's GRPOTrainer, plus the floor.

    .venv/bin/python benchmarks/grpo.py                     # 3 reps x 4 steps of every variant
    .venv/bin/python benchmarks/grpo.py --reps 1 --steps 2 --variants posttrain-hf trl-hf floor
    .venv/bin/python benchmarks/grpo.py --workload w2       # W2, below (after `make quickstart`)
    .venv/bin/python benchmarks/grpo.py --variants posttrain-hf posttrain-hf-server posttrain-hf-async \
        posttrain-hf-retain posttrain-hf-server-retain posttrain-hf-async-retain \
        --results benchmarks/results/grpo_async.md        # W1: server mode and asynchronous training

Workload (identical for every variant): the `base` Qwen2 (~3.4M parameters, `posttrain init-model
--size base --seed 0`), 32 arithmetic prompts x 8 completions x 64 new tokens per step (a fresh model
never stops early, so every completion is 64 tokens), one optimizer step per batch, beta 0 (no
reference model), the same reward function (`length_reward` below), fp32, AdamW lr 1e-6.
Variants, each in its own process, alternating within every repetition:
- posttrain-hf / posttrain-vllm: `kind: grpo` through the public API with `engine: hf | vllm`;
  posttrain-hf-ckpt: the hf engine with `gradient_checkpointing: true` (TRL's GRPOConfig default);
- trl-hf / trl-vllm: GRPOTrainer with HF generate, or `use_vllm=True, vllm_mode="colocate"` (vLLM
  serving bf16: TRL's float32 weight sync into vLLM fails on CPU, see _bf16_serving_copy), with
  TRL's default gradient checkpointing; trl-hf-nockpt: trl-hf without it (posttrain's default);
- floor: the fastest generation of one batch (HF generate and vLLM, whichever is faster) plus one
  forward/backward/optimizer step over the same 256 sequences. With one optimizer step per batch and
  beta 0 no extra no-grad forward is needed (old log-probs equal the current ones, detached).
- posttrain-hf-server: rollout.mode server (one worker process, max_staleness 0); posttrain-hf-async:
  max_staleness 1, trainer and worker on one torch thread each (they run at once on the 2 cores);
- posttrain-hf-packed: the hf engine with `max_tokens_per_microbatch: 4096` (packed update);
  posttrain-hf-retain / posttrain-vllm-retain: `retain_freed_memory: true` (the C allocator keeps
  freed memory instead of faulting it in again every forward/backward).
W2 (`--workload w2`, variable lengths): the quickstart's SFT checkpoint and its grpo batch, 16 prompts
x 8 completions of at most 48 new tokens that stop at eos (12-30 tokens), otherwise as above;
variants posttrain-hf, posttrain-hf-packed, trl-hf; results in results/grpo_w2.md.
Large vocabulary (`--workload vocab`): the model (--model, else the `base` one) with its embedding
padded to Qwen2's 151,936 rows (posttrain.models.pad_vocabulary), 8 prompts x 8 completions x 32 new
tokens; variants posttrain-hf and trl-hf; results in results/grpo_vocab.md. What it shows is memory:
TRL's forward builds the (rows x length x vocabulary) logits, posttrain's never does.
The first step of each run is warm-up and is dropped; s/step is the median of the remaining steps
over repetitions. Peak RSS is each process's maximum (vLLM's engine-core child included).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import alternate, child_result, machine, markdown_table, timed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "arithmetic" / "rl.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "grpo.md"
# W1: a fresh `base` model, every completion 64 tokens. W2 (variable lengths): the quickstart's SFT
# checkpoint with its grpo batch, 16 prompts x 8 completions of at most 48 tokens that stop at eos.
# The parent passes the workload to its children in the environment.
WORKLOADS = {"w1": (32, 8, 64), "w2": (16, 8, 48), "vocab": (8, 8, 32)}
VOCAB = 151_936  # Qwen2's
WORKLOAD = os.environ.get("POSTTRAIN_BENCH_WORKLOAD", "w1")
PROMPTS, GROUP, NEW_TOKENS = WORKLOADS[WORKLOAD]
PACKED_TOKENS = 4096  # posttrain-hf-packed: max_tokens_per_microbatch
VARIANTS = ("posttrain-hf", "posttrain-hf-ckpt", "posttrain-hf-packed", "posttrain-hf-retain", "posttrain-vllm",
            "posttrain-vllm-retain", "posttrain-hf-server", "posttrain-hf-async", "posttrain-hf-server-retain",
            "posttrain-hf-async-retain", "trl-hf",
            "trl-hf-nockpt", "trl-vllm", "floor")



def length_reward(completions: list[Any], **_: Any) -> list[float]:
    """Cheap deterministic reward shared by all variants: fraction of characters that are digits."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def _env() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def child_posttrain(engine: str, model: str, steps: int, checkpointing: bool = False, packed: bool = False,
                    retain: bool = False, server: bool = False, staleness: int = 0) -> None:
    import torch

    import posttrain

    extra = {"max_tokens_per_microbatch": PACKED_TOKENS} if packed else {}
    extra["retain_freed_memory"] = retain
    if server or staleness:
        # asynchronous: trainer and rollout worker each get one of the 2 cores, as they run at once
        threads = 1 if staleness else None
        extra["rollout"] = {"mode": "server", "max_staleness": staleness, "threads": threads}
        if threads:
            torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = posttrain.run_stage(
            "grpo", model=model, data=str(DATA), engine=engine, variant="grpo", gradient_checkpointing=checkpointing,
            **extra,
            rewards=[{"function": f"{Path(__file__).resolve()}:length_reward"}],
            prompts_per_step=PROMPTS, group_size=GROUP, max_tokens=NEW_TOKENS, total_steps=steps,
            lr=1e-6, kl_coef=0.0, save_steps=10_000, run_dir=f"{tmp}/run")
        rows = [json.loads(line) for line in (out.run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r][1:]  # drop warm-up
    phases = [k for k in ("generate", "rollout_wait", "score", "logprobs", "update", "sync") if f"time/{k}" in rows[0]]
    split = {k: statistics.median(r[f"time/{k}"] for r in rows) for k in phases}
    if staleness:  # the workers' side: generation seconds and their idle time per step
        split.update(worker_generate=statistics.median(r["rollout/generation_s"] for r in rows),
                     worker_idle=statistics.median(r["rollout/worker_idle_s"] for r in rows))
    child_result(step_s=[r["time/step"] for r in rows], split=split)


def child_trl(engine: str, model_path: str, steps: int, checkpointing: bool = True) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.last)

    data = load_dataset("json", data_files=str(DATA), split="train").select(range(PROMPTS * (steps + 1)))
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
        num_generations=GROUP, max_completion_length=NEW_TOKENS, beta=0.0, learning_rate=1e-6, max_steps=steps,
        loss_type="grpo", scale_rewards="group", logging_steps=1, save_strategy="no", report_to="none",
        bf16=False, use_cpu=True, disable_tqdm=True, seed=0, use_vllm=engine == "vllm",
        gradient_checkpointing=checkpointing,
        vllm_mode="colocate", vllm_max_model_length=256)
    if engine == "vllm":
        model_path = _bf16_serving_copy(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(model_path), callbacks=[timer])
    phases = {"generate": timed(trainer, "_generate"), "rollout": timed(trainer, "_generate_and_score_completions")}
    trainer.train()
    # TRL's phases per step: generation; the rest of _generate_and_score_completions (rewards,
    # advantages, any no-grad forward); and everything after it (the update)
    gen, rollout = phases["generate"][1:], phases["rollout"][1:]
    split = {"generate": statistics.median(gen), "score+logprobs": statistics.median(r - g for r, g in zip(rollout, gen)),
             "update": statistics.median(t - r for t, r in zip(timer.times[1:], rollout))}
    child_result(step_s=timer.times[1:], split=split)


def _bf16_serving_copy(model_path: str) -> str:
    """TRL's colocated LLM takes its dtype from the model's config; its float32 weight sync fails on
    CPU (prepacked weights), so, as TRL users here must, serve a copy whose config says bfloat16
    (the trainer still trains in float32)."""
    import shutil

    copy = Path(tempfile.mkdtemp()) / "bf16"
    shutil.copytree(model_path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)


def child_floor(model_path: str) -> None:
    """Generation alone (both engines) plus one train step over the batch alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.data import load_dataset_spec
    from posttrain.rl.rollout import SamplingConfig, make_engine

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = list(load_dataset_spec(str(DATA), "rl")[0]["prompt"])[:PROMPTS]
    sampling = SamplingConfig(n=GROUP, temperature=1.0, max_tokens=NEW_TOKENS, seed=0)
    gen = {}
    for name in ("hf", "vllm"):
        engine = make_engine(name, model_path, tokenizer)
        engine.generate(prompts, sampling)  # warm-up
        start = time.perf_counter()
        batch = engine.generate(prompts, sampling)
        gen[name] = time.perf_counter() - start
        engine.close()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = [p + c for p, c in zip(batch.prompt_ids, batch.completion_ids)]
    width = max(map(len, ids))
    prompt_width = min(map(len, batch.prompt_ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    times = []
    for _ in range(3):
        start = time.perf_counter()
        # logits only where completion tokens are predicted (every row's prompt is at most P wide)
        logits = model(input_ids=input_ids, attention_mask=mask, logits_to_keep=width - prompt_width + 1).logits[:, :-1]
        targets = input_ids[:, prompt_width:]
        logprobs = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
        loss = -(logprobs * mask[:, prompt_width:]).sum() / mask[:, prompt_width:].sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    child_result(step_s=[min(gen.values()) + statistics.median(times[1:])], split={"generate_hf": gen["hf"],
                 "generate_vllm": gen["vllm"], "train_step": statistics.median(times[1:])})


def _row(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    steps = [s for r in runs for s in r["step_s"]]
    step = statistics.median(steps)
    split = {k: statistics.median(r["split"][k] for r in runs) for k in runs[0]["split"]}
    return {"name": name, "step": step, "rss": statistics.median(r["peak_rss_mb"] for r in runs), "split": split}


def report(rows: dict[str, dict[str, Any]], header: str, reps: int, steps: int) -> str:
    floor = rows.get("floor", {}).get("step")
    best_trl = min((r["step"] for n, r in rows.items() if n.startswith("trl")), default=None)
    table = []
    for name, r in rows.items():
        completions = PROMPTS * GROUP / r["step"]
        split = ", ".join(f"{k} {v:.2f}" for k, v in r["split"].items())
        vs_trl = ""
        twin = rows.get("trl-" + name.split("-")[1]) if name.startswith("posttrain") else None
        if twin:
            vs_trl = f"{twin['step'] / r['step']:.2f}x"
        table.append([name, f"{r['step']:.2f}", f"{completions:.1f}", f"{completions * NEW_TOKENS:.0f}",
                      vs_trl, f"{r['step'] / floor:.2f}" if floor else "", f"{r['rss']:.0f}", split])
    text = markdown_table(["variant", "s/step", "completions/s", "gen tokens/s", "speed-up vs TRL (same engine)",
                           "x floor", "peak RSS MB", "time split (s)"], table)
    best_pt = min((r["step"] for n, r in rows.items() if n.startswith("posttrain")), default=None)
    extra = f"\n\nBest posttrain vs best TRL: {best_trl / best_pt:.2f}x." if best_pt and best_trl else ""
    for name, r in rows.items():  # server mode and asynchronous training against the synchronous colocated loop
        base_name = name.replace("-server", "").replace("-async", "")
        if base_name != name and base_name in rows:
            extra += f"\n\n{name} vs {base_name}: {rows[base_name]['step'] / r['step']:.2f}x steps/s."
    return f"Machine: {header}. {reps} reps x {steps} steps (first step of each run dropped), medians, {time.strftime('%Y-%m-%d')}.\n\n{text}{extra}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "MODEL", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default=WORKLOAD)
    parser.add_argument("--results", help="where the table goes (default: benchmarks/results/grpo.md, or grpo_WORKLOAD.md)")
    parser.add_argument("--model", help="the model (w2: default runs/quickstart/sft/model, the quickstart's SFT checkpoint)")
    args = parser.parse_args()
    _env()
    if args.child:
        variant, model, steps = args.child
        if variant == "floor":
            child_floor(model)
        else:
            impl, engine, *extra = variant.split("-")
            if impl == "posttrain":
                child_posttrain(engine, model, int(steps), checkpointing="ckpt" in extra, packed="packed" in extra,
                                retain="retain" in extra, server="server" in extra, staleness=int("async" in extra))
            else:
                child_trl(engine, model, int(steps), checkpointing="nockpt" not in extra)
        return
    if args.workload != WORKLOAD:  # the children read the workload from the environment, so re-run with it set
        os.environ["POSTTRAIN_BENCH_WORKLOAD"] = args.workload
        os.execv(sys.executable, [sys.executable, *sys.argv])
    from posttrain.models import init_model, pad_vocabulary

    header = f"{machine()}; workload {WORKLOAD}"
    defaults = {"w1": [v for v in VARIANTS if not v.endswith(("-packed", "-retain", "-nockpt")) and "-server" not in v
                       and "-async" not in v],  # W1's table
                "w2": ["posttrain-hf", "posttrain-hf-packed", "trl-hf"], "vocab": ["posttrain-hf", "trl-hf"]}
    names = args.variants or defaults[WORKLOAD]
    with tempfile.TemporaryDirectory() as tmp:
        quickstart_sft = REPO / "runs" / "quickstart" / "sft" / "model"
        if WORKLOAD == "w2" and not args.model:
            if not (quickstart_sft / "config.json").exists():
                parser.error(f"--workload w2 runs on the quickstart's SFT checkpoint: run `make quickstart` first "
                             f"(it writes {quickstart_sft}) or pass --model")
            args.model = str(quickstart_sft)
        model = args.model or str(init_model(Path(tmp) / "base", size="base", seed=0))
        if WORKLOAD == "vocab":
            model = str(pad_vocabulary(model, Path(tmp) / "vocab", VOCAB))
        variants = {v: [v, model, str(args.steps)] for v in names}
        results = alternate(Path(__file__), variants, args.reps)
    failed = {name: runs[-1]["error"] for name, runs in results.items() if any("error" in r for r in runs)}
    rows = {name: _row(name, runs) for name, runs in results.items() if name not in failed}
    text = report(rows, header, args.reps, args.steps)
    text += "".join(f"\n{name} failed: {error}\n" for name, error in failed.items())
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.results) if args.results else RESULTS if WORKLOAD == "w1" else RESULTS.with_name(f"grpo_{WORKLOAD}.md")
    out.write_text(text)


if __name__ == "__main__":
    main()
