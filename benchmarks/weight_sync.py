"""Server mode's weight sync: the shared-memory copy against the broadcast channel, on CPU.

    .venv/bin/python benchmarks/weight_sync.py                  # both models, 2 reps, 5 syncs each
    .venv/bin/python benchmarks/weight_sync.py --sizes base --reps 3

One hf rollout worker process (1 torch thread; the trainer 1 thread), a float32 Qwen2 policy:
`base` (~3.4M parameters) and `wide` (hidden 1024, 8 layers, ~104M parameters, 0.4 GB). Each sync
perturbs the weights (as an update would), calls `sync_weights`, then waits for the worker's load:
- copy (`rollout.weight_transport: copy`): the trainer writes the shared float32 copy, the worker
  copies it into its model;
- broadcast (`weight_transport: broadcast`): the trainer streams each tensor over the worker's
  gloo channel (TCP on 127.0.0.1), the worker loads each as it arrives.
Reported: the trainer's time in `sync_weights` (what blocks the training loop), the time until
the worker acknowledged the load (sync + load), medians over syncs after the first and over
repetitions; each variant in its own process, alternating. On a GPU machine the broadcast runs
over NCCL between GPUs instead, which this CPU benchmark cannot show (benchmarks/gpu_smoke.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import alternate, child_result, machine, markdown_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "weight_sync.md"
WIDE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 8,
        "num_key_value_heads": 8}


def _model(tmp: str, size: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from posttrain.models import init_model

    path = init_model(Path(tmp) / "m", size="base", seed=0)
    if size == "wide":
        config = AutoConfig.from_pretrained(path)
        for key, value in WIDE.items():
            setattr(config, key, value)
        config.head_dim = WIDE["hidden_size"] // WIDE["num_attention_heads"]
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[0]] * WIDE["num_hidden_layers"]
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    return str(path)


def child(transport: str, size: str, syncs: int) -> None:
    import torch
    from transformers import AutoTokenizer

    from posttrain.models import load_model
    from posttrain.rl.rollout.service import RolloutService

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = _model(tmp, size)
        policy = load_model(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        service = RolloutService("hf", path, tokenizer, policy=policy, workers=1, threads=1, weight_transport=transport)
        sync_s, total_s = [], []
        try:
            for version in range(1, syncs + 1):
                with torch.no_grad():
                    for param in policy.parameters():
                        param.mul_(1.0001)
                start = time.perf_counter()
                service.sync_weights(policy, version=version)
                synced = time.perf_counter()
                service.load_results()
                sync_s.append(synced - start)
                total_s.append(time.perf_counter() - start)
        finally:
            service.close()
    params = sum(p.numel() for p in policy.parameters())
    child_result(sync_s=sync_s[1:], total_s=total_s[1:], params=params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+")
    parser.add_argument("--sizes", nargs="+", default=["base", "wide"], choices=["base", "wide"])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--syncs", type=int, default=5)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    script = Path(__file__).resolve()
    lines = [f"# Weight sync to a rollout worker: shared-memory copy vs broadcast (CPU, gloo)\n\nMachine: {machine()}\n"]
    for size in args.sizes:
        variants = {t: [t, size, str(args.syncs)] for t in ("copy", "broadcast")}
        results = alternate(script, variants, args.reps)
        medians = {name: {key: statistics.median(t for r in rows for t in r[key]) for key in ("sync_s", "total_s")}
                   for name, rows in results.items()}
        peak = {name: max(r["peak_rss_mb"] for r in rows) for name, rows in results.items()}
        copy = medians["copy"]
        rows = [[name, f"{m['sync_s']:.3f}", f"{m['total_s']:.3f}", f"{m['total_s'] / copy['total_s']:.2f}x",
                 f"{peak[name]:.0f}"] for name, m in medians.items()]
        params = results["copy"][0]["params"]
        lines += [f"## {size}: {params / 1e6:.1f}M parameters ({params * 4 / 2**20:.0f} MiB float32)\n",
                  markdown_table(["transport", "trainer in sync_weights s", "until loaded s", "until loaded vs copy",
                                  "trainer peak RSS MB"], rows), ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
