"""The RL update on its own: packed vs padded micro-batches (W3), chunked vs full logits on a real vocabulary.

    .venv/bin/python benchmarks/update.py                  # both workloads, 3 reps each
    .venv/bin/python benchmarks/update.py --workload w3 --reps 2

W3, a wide length spread: the `base` Qwen2 (~3.4M parameters, seed 0), 64 completions per step
(8 prompts x 8) of 24 prompt tokens and 10..256 response tokens (uniform, seeded), random ids,
random advantages; one `minibatch_step` (forward, backward, AdamW step) per step, as the loop runs it.
- padded: grad_accum 4 (4 micro-batches of 16 rows x 280 columns), today's default;
- packed: `max_tokens_per_microbatch` 4480 (= 16 x 280, the same memory bound), rows of the
  longest sequence, first fit decreasing.
Large vocabulary: a Qwen2 of hidden 64, 2 layers and a 151,936-token vocabulary (Qwen2's, tied
embeddings), 32 completions of 32 prompt + 96 response tokens, one micro-batch:
- chunked: the loop's default (lm_head over the generated positions, 256 MiB chunks);
- full: the model's own (B, L, V) logits, gathered (the path for heads it cannot chunk).
Each variant runs in its own process, alternating within every repetition; s/step is the median
over steps after a warm-up step and over repetitions; peak RSS is the child's maximum.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import alternate, child_result, machine, markdown_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "update.md"
W3 = {"prompts": 8, "group": 8, "prompt_len": 24, "min_len": 10, "max_len": 256, "grad_accum": 4}
VOCAB = {"vocab": 151_936, "rows": 32, "prompt_len": 32, "response_len": 96}


def _experience(prompt_len: int, response_lens: list[int], vocab: int, seed: int):
    import torch

    from posttrain.rl.loop.batches import ExperienceBatch
    from posttrain.rl.loop.tokens import collate
    from posttrain.rl.rollout.types import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    n = len(response_lens)
    prompts = [torch.randint(3, vocab, (prompt_len,), generator=g).tolist() for _ in range(n)]
    completions = [torch.randint(3, vocab, (k,), generator=g).tolist() for k in response_lens]
    batch = RolloutBatch(prompt_ids=prompts, completion_ids=completions,
                         sampler_logprobs=[[-1.0] * len(c) for c in completions], finish_reasons=["stop"] * n,
                         completions=[""] * n, prompt_index=list(range(n)))
    t = collate(batch, pad_token_id=0)
    advantages = torch.randn(n, generator=g)[:, None] * t.response_mask
    return ExperienceBatch(input_ids=t.input_ids, attention_mask=t.attention_mask, position_ids=t.position_ids,
                           response_mask=t.response_mask, old_logprobs=None, sampler_logprobs=t.sampler_logprobs,
                           advantages=advantages, prompt_width=t.prompt_width)


def _session(policy, chunk_bytes: int, **keys):
    import torch
    from accelerate import Accelerator

    from posttrain.rl.algos import FixedKLController
    from posttrain.rl.loop.dist import Processes
    from posttrain.rl.loop.models import ActorCritic
    from posttrain.stages.grpo import GRPOConfig

    config = GRPOConfig.model_validate({"kind": "grpo", "data": "x.jsonl", "rewards": [{"function": "m:f"}],
                                        "group_size": 8, "prompts_per_step": 8, "kl_coef": 0.0, **keys})
    model = ActorCritic(policy, chunk_bytes=chunk_bytes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    acc = Accelerator(gradient_accumulation_steps=config.grad_accum, cpu=True)
    prepared, optimizer = acc.prepare(model, optimizer)
    return SimpleNamespace(config=config, accelerator=acc, procs=Processes(), model=prepared, unwrapped=model,
                           optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                           kl_controller=FixedKLController(0.0))


def _time_steps(session, exp, steps: int) -> list[float]:
    from posttrain.rl.loop.update import minibatch_step

    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        minibatch_step(session, exp)
        times.append(time.perf_counter() - start)
    return times[1:]  # drop warm-up


def child_w3(layout: str, steps: int) -> None:
    import torch

    from posttrain.models import init_model
    from posttrain.rl.loop.models import load_policy

    g = torch.Generator().manual_seed(0)
    n = W3["prompts"] * W3["group"]
    lengths = torch.randint(W3["min_len"], W3["max_len"] + 1, (n,), generator=g).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        policy = load_policy(str(init_model(Path(tmp) / "m", size="base", seed=0)))
    exp = _experience(W3["prompt_len"], lengths, policy.config.vocab_size, seed=1)
    rows = n // W3["grad_accum"]
    keys = ({"grad_accum": W3["grad_accum"]} if layout == "padded"
            else {"max_tokens_per_microbatch": rows * exp.input_ids.shape[1]})
    session = _session(policy, 256 * 2**20, **keys)
    times = _time_steps(session, exp, steps)
    child_result(step_s=times, tokens_real=int(exp.attention_mask.sum()), tokens_padded=exp.input_ids.numel())


def child_vocab(logits: str, steps: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.models.factory import build_config
    from posttrain.rl.loop.models import disable_dropout

    config = build_config("qwen2", "tiny", vocab_size=VOCAB["vocab"], pad_token_id=0, eos_token_id=1, bos_token_id=0)
    torch.manual_seed(0)
    policy = disable_dropout(AutoModelForCausalLM.from_config(config, dtype=torch.float32))
    exp = _experience(VOCAB["prompt_len"], [VOCAB["response_len"]] * VOCAB["rows"], VOCAB["vocab"], seed=1)
    session = _session(policy, 256 * 2**20, group_size=8, prompts_per_step=VOCAB["rows"] // 8)
    session.unwrapped.from_hidden = logits == "chunked"
    child_result(step_s=_time_steps(session, exp, steps))


def _summarise(results: dict, variants: list[str]) -> dict[str, dict]:
    out = {}
    for name in variants:
        ok = [r for r in results[name] if "error" not in r]
        if not ok:
            out[name] = {"error": results[name][0]["error"]}
            continue
        out[name] = {"s_step": statistics.median(t for r in ok for t in r["step_s"]),
                     "peak": max(r["peak_rss_mb"] for r in ok), **{k: v for k, v in ok[0].items()
                                                                   if k.startswith("tokens")}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+")
    parser.add_argument("--workload", choices=["w3", "vocab", "all"], default="all")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        kind, variant = args.child[:2]
        (child_w3 if kind == "w3" else child_vocab)(variant, int(args.child[2]))
        return
    script = Path(__file__).resolve()
    lines = [f"# RL update benchmark\n\nMachine: {machine()}\n"]
    if args.workload in ("w3", "all"):
        variants = {v: ["w3", v, str(args.steps)] for v in ("padded", "packed")}
        s = _summarise(alternate(script, variants, args.reps), list(variants))
        rows = [[name, f"{v['s_step']:.2f}", f"{s['padded']['s_step'] / v['s_step']:.2f}x", f"{v['peak']:.0f}"]
                for name, v in s.items()]
        lines += [f"## W3: 64 completions, 10..256 response tokens ({s['packed'].get('tokens_real')} real of "
                  f"{s['packed'].get('tokens_padded')} padded tokens)\n",
                  markdown_table(["update", "s/step", "speed vs padded", "peak RSS MB"], rows), ""]
    if args.workload in ("vocab", "all"):
        variants = {v: ["vocab", v, str(args.steps)] for v in ("chunked", "full")}
        s = _summarise(alternate(script, variants, args.reps), list(variants))
        rows = [[name, v.get("error", f"{v.get('s_step', 0):.2f}"), f"{v.get('peak', 0):.0f}"] for name, v in s.items()]
        lines += ["## Vocabulary 151,936: 32 completions x (32 + 96) tokens, one micro-batch\n",
                  markdown_table(["logits", "s/step", "peak RSS MB"], rows), ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
