"""Rollout throughput and weight-sync time of an engine, on a seeded model built locally.

    python -m posttrain.rl.rollout.bench --engine hf --size base
    python -m posttrain.rl.rollout.bench --engine vllm --prompts 32 --n 8 --max-tokens 64

Prompts are seeded arithmetic questions in chat form. Sampling is at temperature 1 and eos
ends a completion as usual, so tokens/s counts the tokens actually generated.
The first generate call is a warm-up and is not timed. Each run prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from posttrain.rl.rollout.types import SamplingConfig


def make_prompts(count: int, seed: int = 0) -> list[list[dict]]:
    """``count`` seeded chat prompts ("What is A plus B?")."""
    rng = random.Random(seed)
    questions = [f"What is {rng.randint(0, 99)} plus {rng.randint(0, 99)}?" for _ in range(count)]
    return [[{"role": "user", "content": question}] for question in questions]


def run_benchmark(engine, policy, prompts: int = 32, n: int = 8, max_tokens: int = 64,
                  repeats: int = 2, seed: int = 0) -> dict:
    """Time ``engine.generate`` (best of ``repeats``) and ``engine.sync_weights(policy)``."""
    batch_prompts = make_prompts(prompts, seed)
    sampling = SamplingConfig(n=n, max_tokens=max_tokens, temperature=1.0, seed=seed)
    engine.generate(batch_prompts[:2], sampling.model_copy(update={"max_tokens": 4}))  # warm-up
    best = None
    for _ in range(repeats):
        batch = engine.generate(batch_prompts, sampling)
        if best is None or batch.generation_seconds < best.generation_seconds:
            best = batch
    tokens = sum(len(ids) for ids in best.completion_ids)
    start = time.perf_counter()
    engine.sync_weights(policy)
    sync_s = time.perf_counter() - start
    return {"completions": len(best), "tokens": tokens,
            "generate_s": round(best.generation_seconds, 3),
            "completions_per_s": round(len(best) / best.generation_seconds, 1),
            "tokens_per_s": round(tokens / best.generation_seconds, 1),
            "sync_s": round(sync_s, 3),
            # vLLM's split of the sync: gathering/writing shards vs the in-engine reload.
            **{f"sync_{key}": round(value, 3) for key, value in
               getattr(engine, "last_sync", {}).items() if key.endswith("_s")}}


def main(argv: list[str] | None = None) -> dict:
    """Command line entry point; returns the result it prints."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--size", default="base", help="posttrain.models size preset")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--multiprocess", type=int, choices=(0, 1), default=1,
                        help="vllm only: 1 = engine core in its own process (vLLM's default)")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from posttrain.models import init_model, load_model
    from posttrain.rl.rollout import make_engine

    with tempfile.TemporaryDirectory(prefix="posttrain-bench-") as tmp:
        model_dir = init_model(Path(tmp) / args.size, size=args.size, seed=0)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        options = {"max_model_len": 512, "multiprocess": bool(args.multiprocess)} \
            if args.engine == "vllm" else {}
        start = time.perf_counter()
        engine = make_engine(args.engine, str(model_dir), tokenizer, **options)
        startup_s = time.perf_counter() - start
        try:
            result = run_benchmark(engine, load_model(model_dir), args.prompts, args.n,
                                   args.max_tokens, args.repeats)
        finally:
            engine.close()
    result = {"engine": args.engine, "size": args.size, "startup_s": round(startup_s, 1),
              **({"multiprocess": bool(args.multiprocess)} if args.engine == "vllm" else {}),
              **result}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
