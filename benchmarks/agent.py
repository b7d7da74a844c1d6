"""Agentic GRPO: posttrain's grpo stage with the `tools` environment against TRL 1.16's GRPOTrainer
with `tools=[calculator]`, on the agent recipe's workload.

    .venv/bin/posttrain run recipes/agent_tools.yaml        # once: its SFT checkpoint is the start
    .venv/bin/python benchmarks/agent.py                     # 3 seeds x 30 steps of both, ~9 min
    .venv/bin/python benchmarks/agent.py --reps 1 --steps 4  # a quick look

Workload (identical for both): the SFT checkpoint of recipes/agent_tools.yaml (runs/agent_tools/
sft/model, or --model), its GRPO data (data/agent/rl.jsonl) and its grpo stage's settings, read
from the recipe: 16 prompts x 8 episodes per step, temperature 0.6, lr 5e-5 constant, beta 0, one
optimizer step per batch, group-normalized advantages, sequence-mean token-mean loss, fp32, no
gradient checkpointing. Repetition r runs seed r on both sides (sampling and data order; the SFT
checkpoint is the same), so the held-out columns show the spread over seeds. Episodes: the
calculator tool (posttrain.agents.calculator, the same function on both sides), at most 3
assistant turns (TRL: max_tool_calling_iterations 2) and 160 tokens after the prompt, tool results
included (posttrain: max_episode_tokens; TRL: max_completion_length). The reward is the `math` verifier (extract: last_number) on the last
assistant message against the `answer` column, through posttrain's verifier on both sides.
What differs, and cannot be made equal: posttrain also caps each turn at 64 tokens (TRL has no
per-turn cap; the SFT model's turns end at eos well before either cap); posttrain runs tool calls
on worker threads with a timeout, TRL in its training loop.

Each variant runs in its own process, alternating within every repetition (benchmarks/harness.py),
trains `--steps` steps, saves its model, and then (untimed) runs posttrain's eval stage of the
recipe on it: greedy, the same environment, on the 200 held-out items. Episodes/s is episodes per
step over the step's wall time (median over steps, the first step dropped as warm-up). Results go
to results/agent.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import alternate, child_result, machine, markdown_table, timed

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "agent_tools.yaml"
RESULTS = REPO / "benchmarks" / "results" / "agent.md"
DEFAULT_MODEL = REPO / "runs" / "agent_tools" / "sft" / "model"
VARIANTS = ("posttrain-hf", "trl-hf")


def recipe_stages() -> dict[str, dict[str, Any]]:
    """The agent recipe's grpo and eval_grpo stages, data paths made absolute."""
    import yaml

    stages = yaml.safe_load(RECIPE.read_text())["stages"]
    out = {}
    for name in ("grpo", "eval_grpo"):
        stage = dict(stages[name])
        stage["data"] = str((RECIPE.parent / stage["data"]).resolve())
        stage.pop("kind"), stage.pop("model", None)
        out[name] = stage
    return out


def final_answer_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """TRL reward function: posttrain's `math` verifier (extract: last_number) on the last assistant
    message of each episode, as the grpo stage's reward channel scores it."""
    from posttrain.verification import run_verifier

    options = recipe_stages()["grpo"]["rewards"][0]["options"]
    texts = [next((m.get("content") or "" for m in reversed(c) if m["role"] == "assistant"), "") for c in completions]
    return run_verifier("math", texts, {"answer": list(answer)}, **options).scores


def held_out(model_dir: str, run_dir: str) -> dict[str, float]:
    """The recipe's eval_grpo stage on `model_dir`: greedy accuracy and tool calls, easy / hard."""
    import posttrain

    out = posttrain.run_stage("eval", model=model_dir, run_dir=run_dir, **recipe_stages()["eval_grpo"])
    return {k.removeprefix("eval/"): v for k, v in out.metrics.items()
            if k.startswith(("eval/accuracy", "eval/tool_calls"))}


def child_posttrain(model: str, steps: int, seed: int) -> None:
    import posttrain

    grpo = recipe_stages()["grpo"]
    with tempfile.TemporaryDirectory() as tmp:
        out = posttrain.run_stage("grpo", model=model, run_dir=f"{tmp}/run", seed=seed,
                                  **{**grpo, "total_steps": steps, "save_steps": 10_000})
        rows = [json.loads(line) for line in (out.run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "time/step" in r]
        accuracy = held_out(str(out.output), f"{tmp}/eval")
    episodes = grpo["prompts_per_step"] * grpo["group_size"]
    child_result(step_s=[r["time/step"] for r in rows[1:]], episodes_per_step=episodes,
                 generate_s=statistics.median(r["time/generate"] for r in rows[1:]),
                 train_tool_calls=[r.get("episode/tool_calls", 0.0) for r in rows], held_out=accuracy)


def child_trl(model_path: str, steps: int, seed: int) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen3_template

    from posttrain.agents.calculator import calculator

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.last)

    grpo = recipe_stages()["grpo"]
    env = grpo["environment"]
    prompts, group = grpo["prompts_per_step"], grpo["group_size"]
    data = load_dataset("json", data_files=grpo["data"], split="train")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # TRL parses tool calls with a response template it knows only for released chat templates.
    # posttrain's tiny-model template writes Qwen2.5/3's assistant turn (<|im_start|>assistant\n,
    # <tool_call>{json}</tool_call>, <|im_end|>), so Qwen3's template parses it as it is.
    tokenizer.response_template = qwen3_template
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=f"{tmp}/trl", per_device_train_batch_size=prompts * group, gradient_accumulation_steps=1,
            num_generations=group, max_completion_length=env["max_episode_tokens"],
            max_tool_calling_iterations=env["max_turns"] - 1, temperature=grpo["temperature"],
            beta=grpo["kl_coef"], learning_rate=grpo["lr"], lr_scheduler_type="constant", warmup_steps=0,
            max_steps=steps, loss_type="grpo", scale_rewards="group", logging_steps=1, save_strategy="no",
            report_to="none", bf16=False, use_cpu=True, disable_tqdm=True, seed=seed, gradient_checkpointing=False)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        timer = StepTimer()
        trainer = GRPOTrainer(model=model, reward_funcs=[final_answer_reward], args=args, train_dataset=data,
                              processing_class=tokenizer, tools=[calculator], callbacks=[timer])
        generate = timed(trainer, "_generate")
        trainer.train()
        trainer.save_model(f"{tmp}/model")
        tokenizer.save_pretrained(f"{tmp}/model")
        accuracy = held_out(f"{tmp}/model", f"{tmp}/eval")
    logs = [r for r in trainer.state.log_history if "tools/call_frequency" in r]
    child_result(step_s=timer.times[1:], episodes_per_step=prompts * group, generate_s=statistics.median(generate[1:]),
                 train_tool_calls=[r["tools/call_frequency"] for r in logs], held_out=accuracy)


def _row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    step = statistics.median(s for r in runs for s in r["step_s"])
    held = {k: statistics.median(r["held_out"][k] for r in runs) for k in runs[0]["held_out"]}
    return {"step": step, "episodes_s": runs[0]["episodes_per_step"] / step, "rss": statistics.median(
        r["peak_rss_mb"] for r in runs), "generate": statistics.median(r["generate_s"] for r in runs),
        "held": held, "per_rep": [r["held_out"].get("accuracy/hard", float("nan")) for r in runs]}


def report(rows: dict[str, dict[str, Any]], header: str, reps: int, steps: int, model: str) -> str:
    table = []
    trl = rows.get("trl-hf")
    for name, r in rows.items():
        vs = f"{r['episodes_s'] / trl['episodes_s']:.2f}x" if trl and name != "trl-hf" else ""
        held = r["held"]
        table.append([name, f"{r['step']:.2f}", f"{r['episodes_s']:.1f}", vs, f"{r['generate']:.2f}",
                      f"{held.get('accuracy/hard', float('nan')):.2f}", f"{held.get('accuracy/easy', float('nan')):.2f}",
                      f"{held.get('tool_calls/hard', float('nan')):.2f}", f"{held.get('tool_calls/easy', float('nan')):.2f}",
                      " / ".join(f"{a:.2f}" for a in r["per_rep"]), f"{r['rss']:.0f}"])
    text = markdown_table(["variant", "s/step", "episodes/s", "vs TRL", "generate s/step", "held-out hard acc",
                           "easy acc", "hard calls/ep", "easy calls/ep", "hard acc per seed", "peak RSS MB"], table)
    return (f"Machine: {header}. Start: {model}. {reps} reps (seeds 0..{reps - 1}) x {steps} steps (first step of each run dropped from "
            f"the timing), medians, {time.strftime('%Y-%m-%d')}.\n\n{text}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "MODEL", "STEPS", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="the SFT checkpoint to start from")
    args = parser.parse_args()
    if args.child:
        variant, model, steps, seed = args.child
        (child_posttrain if variant.startswith("posttrain") else child_trl)(model, int(steps), int(seed))
        return
    if not (Path(args.model) / "config.json").exists():
        parser.error(f"{args.model} is not a model directory: run `posttrain run recipes/agent_tools.yaml` first "
                     "(its SFT stage writes runs/agent_tools/sft/model) or pass --model")
    header = machine()
    results = alternate(Path(__file__), {v: [v, args.model, str(args.steps)] for v in args.variants}, args.reps,
                        rep_args=True)
    failed = {name: runs[-1]["error"] for name, runs in results.items() if any("error" in r for r in runs)}
    rows = {name: _row(runs) for name, runs in results.items() if name not in failed}
    text = report(rows, header, args.reps, args.steps, args.model)
    text += "".join(f"\n{name} failed: {error}\n" for name, error in failed.items())
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
