"""Per-step metrics of the RL loop and the stage's final summary.

Names: ``reward`` / ``reward_std`` (summed channels, before shaping), ``rewards/NAME/mean|std|
pass_rate|errors`` per channel (and ``timeouts`` for verifier channels), ``pass_rate`` (first
pass/fail channel), ``kl``, ``entropy``,
``clip_frac_low|high``, ``advantages/*``, ``response_length/mean|max``, ``truncation_rate``,
``sampling/*`` (dynamic sampling draws), ``mismatch/*`` (sampler vs trainer log-probs),
``tokens_per_s/generate|train``, ``time/generate|score|logprobs|update|sync|step`` (seconds) and
``memory/generate|logprobs|update|sync/rss_mb_max|cuda_mb_max`` (peak MB of the phase, see PhaseTimer).
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from posttrain.common.memory import PeakMemory
from posttrain.report.metrics import read_metrics
from posttrain.rl.loop.batches import RolloutTensors
from posttrain.rl.scored import ScoredBatch

# the step's sequential phases whose peak memory is logged (score runs in worker pools, and its
# waits nest inside logprobs, so measuring it would reset the enclosing phase's peak)
MEMORY_PHASES = frozenset({"generate", "logprobs", "update", "sync"})


class PhaseTimer:
    """``with timer("generate"): ...`` accumulates wall seconds per phase and, for the
    MEMORY_PHASES, records their peak memory: ``memory/PHASE/rss_mb_max`` (this process's
    resident set) and on CUDA ``memory/PHASE/cuda_mb_max`` (allocated), each the max over the
    step's processes once reduced."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.memory: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        peak = PeakMemory() if phase in MEMORY_PHASES else None
        try:
            with peak or nullcontext():
                yield
        finally:
            self.seconds[phase] += time.perf_counter() - start
        for name, value in (("rss_mb_max", peak and peak.rss_mb), ("cuda_mb_max", peak and peak.cuda_mb)):
            if value is not None:
                key = f"memory/{phase}/{name}"
                self.memory[key] = max(value, self.memory.get(key, 0.0))


def reward_metrics(scored: ScoredBatch) -> dict[str, float]:
    """Summed reward and per-channel mean/std, pass rate and error count."""
    out = {"reward": scored.rewards.mean(), "reward_std": scored.rewards.std(unbiased=False)}
    for name, scores in scored.channel_scores.items():
        out[f"rewards/{name}/mean"] = scores.mean()
        out[f"rewards/{name}/std"] = scores.std(unbiased=False)
        out[f"rewards/{name}/errors"] = float(scored.channel_errors.get(name, 0))
        if name in scored.channel_timeouts:  # verifier channels: hung checks, apart from errors
            out[f"rewards/{name}/timeouts"] = float(scored.channel_timeouts[name])
    for name, passed in scored.channel_passed.items():
        out[f"rewards/{name}/pass_rate"] = passed.float().mean()
        out.setdefault("pass_rate", passed.float().mean())
    return {k: float(v) for k, v in out.items()}


def rollout_metrics(tensors: RolloutTensors, timer: PhaseTimer, ppo_epochs: int) -> dict[str, float]:
    """Response lengths, truncation, and generation / training throughput."""
    lengths = tensors.response_lengths
    generated = float(lengths.sum())
    trained = float(tensors.attention_mask.sum()) * ppo_epochs
    stats = {
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "truncation_rate": float(tensors.truncated.float().mean()),
        "tokens_per_s/train": trained / max(timer.seconds["update"], 1e-9),
    }
    if "generate" in timer.seconds:  # asynchronous training times generation in the workers (rollout/generation_s)
        stats["tokens_per_s/generate"] = generated / max(timer.seconds["generate"], 1e-9)
    return stats


def scalars(stats: dict[str, Any]) -> dict[str, float]:
    """Detached tensors and numbers -> floats."""
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in stats.items() if v is not None}


def summarize(metrics_path: Path, total_steps: int) -> dict[str, Any]:
    """First/last reward (means over the first and last 10% of steps, at least one), pass rate,
    KL and mean time per step, read back from the metrics file (so resumed runs count fully)."""
    records = [r for r in read_metrics(metrics_path) if "reward" in r]
    if not records:
        return {"steps": 0}
    k = max(1, len(records) // 10)

    def mean(key: str, part: list[dict]) -> float | None:
        values = [r[key] for r in part if r.get(key) is not None]
        return round(sum(values) / len(values), 6) if values else None

    summary: dict[str, Any] = {"steps": records[-1]["step"], "total_steps": total_steps}
    for key in ("reward", "pass_rate", "kl", "response_length/mean"):
        first, last = mean(key, records[:k]), mean(key, records[-k:])
        if first is not None:
            summary[f"first_{key}"], summary[f"last_{key}"] = first, last
    summary["seconds_per_step"] = mean("time/step", records)
    for key in sorted({k for r in records for k in r if k.startswith("memory/")}):
        summary[key] = max(r[key] for r in records if key in r)  # the run's peak per phase
    return summary
