"""Process-group plumbing on top of ``accelerate``: one process, DDP, or DeepSpeed ZeRO-2/3.

How a step is shared across N processes (the launcher runs the same stage function in each):

- Prompts: every process walks the same seeded prompt order; of each step's
  ``prompts_per_step`` prompts, process r takes prompts r, r+N, r+2N, ... and generates their
  G completions with its OWN rollout engine (an engine per process; no scatter of completions).
  A prompt group never spans processes, so group statistics are local.
- Rewards are scored where they were generated, then all-gathered for the advantage estimator
  (batch-level statistics such as ``advantage_scale: batch`` see the whole step) and for metrics.
- Loss normalisation uses GLOBAL token / sequence counts (summed over processes and micro-
  batches) and each process's loss is multiplied by ``world_size * grad_accum``: DDP averages
  gradients over processes and accelerate divides by the accumulation steps, so the update
  equals the full-batch update exactly (see posttrain.rl.algos.aggregation).
- Dynamic sampling rounds continue until EVERY process has its share (an all-reduce of the
  smallest fill), so all processes consume the same prompts and stay in step.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def make_accelerator(config) -> Any:
    """An Accelerator for the stage: mixed precision from `precision`, accumulation from `grad_accum`."""
    from accelerate import Accelerator

    from posttrain.stages.trl_bridge import resolve_precision

    precision = resolve_precision(config.precision)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=mixed)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        ds = plugin.deepspeed_config
        micro = (config.minibatch_size or config.prompts_per_step * config.group_size // accelerator.num_processes)
        # no dataloader is prepared, so DeepSpeed's "auto" batch sizes must be filled here
        if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            ds["train_micro_batch_size_per_gpu"] = max(1, micro // config.grad_accum)
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = config.max_grad_norm
    return accelerator


def zero_stage_3(accelerator: Any) -> bool:
    """True when DeepSpeed partitions the parameters themselves."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def gather_rows(accelerator: Any, local: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """All processes' (B,) rows concatenated in rank order, and the slice that is this process's."""
    if accelerator.num_processes == 1:
        return local, slice(0, local.shape[0])
    everything = accelerator.gather(local.to(accelerator.device)).to(local.device)
    start = accelerator.process_index * local.shape[0]
    return everything, slice(start, start + local.shape[0])


def global_sum(accelerator: Any, value: torch.Tensor | float) -> torch.Tensor:
    """Sum of a scalar over processes."""
    tensor = torch.as_tensor(value, dtype=torch.float32, device=accelerator.device)
    if accelerator.num_processes == 1:
        return tensor
    return accelerator.reduce(tensor, reduction="sum")


def global_min(accelerator: Any, value: int) -> int:
    """Smallest integer over processes."""
    if accelerator.num_processes == 1:
        return int(value)
    tensor = torch.tensor([float(value)], device=accelerator.device)
    return int(accelerator.gather(tensor).min().item())


def reduce_metrics(accelerator: Any, metrics: dict[str, float]) -> dict[str, float]:
    """Average metrics over processes (keys ending in ``max``/``min`` take the max/min).

    Processes may log different keys (a pass rate exists only where a batch was all 0/1): the
    key sets are gathered first and a key is reduced over the processes that have it.
    """
    if accelerator.num_processes == 1:
        return metrics
    from accelerate.utils import gather_object

    keys = sorted(set().union(*gather_object([tuple(sorted(metrics))])))
    values = torch.tensor([float(metrics.get(k, math.nan)) for k in keys], device=accelerator.device)
    gathered = accelerator.gather(values[None]).view(accelerator.num_processes, -1).cpu()
    out = {}
    for i, key in enumerate(keys):
        column = gathered[:, i][~torch.isnan(gathered[:, i])]
        if column.numel():
            out[key] = float(column.max() if key.endswith("max") else column.min() if key.endswith("min") else column.mean())
    return out
