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

Ranks and collectives come from ``torch.distributed`` itself (:class:`Processes`), not from the
Accelerator: under DeepSpeed on CPU, accelerate 1.15 reports ``num_processes == 1`` and
``process_index == 0`` on every rank although the gloo group has them all.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def make_accelerator(config, world_size: int) -> Any:
    """An Accelerator for the stage: mixed precision from `precision`, accumulation from `grad_accum`,
    and under `distributed.zero` a DeepSpeed plugin built from the stage's own config
    (posttrain.common.distributed), whichever launcher started the process: torchrun leaves no
    accelerate DeepSpeed settings in the environment, and the stage would silently run without ZeRO.

    The DeepSpeed batch keys (written as "auto" for the HF Trainer) are set here: no dataloader is
    prepared and the loop owns the batch geometry.
    """
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    from posttrain.common.distributed import deepspeed_config
    from posttrain.common.runtime import resolve_precision

    precision = resolve_precision(config.precision)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    plugin = None
    if config.distributed.zero:
        ds = deepspeed_config(config.distributed)
        ds["train_micro_batch_size_per_gpu"] = config.batch_plan(world_size).micro_batch
        ds["gradient_accumulation_steps"] = config.grad_accum
        ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * config.grad_accum * world_size
        ds["gradient_clipping"] = config.max_grad_norm
        plugin = DeepSpeedPlugin(hf_ds_config=ds, zero3_init_flag=False)
    # Without CUDA, accelerate treats several processes as one (DistributedType.NO: no DDP, no
    # gradient all-reduce) unless told cpu=True; DeepSpeed must not get it (it then stays off).
    return Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=mixed,
                       cpu=not torch.cuda.is_available() and plugin is None, deepspeed_plugin=plugin)


def partition_reference(ref_model: torch.nn.Module | None, acc: Any) -> torch.nn.Module | None:
    """Under ZeRO-3, partition the frozen reference like the policy: a DeepSpeed inference engine
    (no optimizer) over the stage's own DeepSpeed config, so no process holds a full copy and its
    forwards gather parameters collectively (every process runs them: the experience phase's
    micro-batch count is the same everywhere). Otherwise the reference is returned as it is (a
    full copy per process, as TRL and OpenRLHF keep it below ZeRO-3)."""
    from accelerate.utils import DistributedType

    if ref_model is None or acc.distributed_type != DistributedType.DEEPSPEED:
        return ref_model
    config = copy.deepcopy(acc.state.deepspeed_plugin.deepspeed_config)
    if config["zero_optimization"]["stage"] != 3:
        return ref_model
    import deepspeed

    for key in ("optimizer", "scheduler"):  # inference only: nothing to optimise or schedule
        config.pop(key, None)
    config["zero_optimization"].pop("offload_optimizer", None)
    hidden = ref_model.config.hidden_size  # the "auto" buckets are sized from the policy at prepare time
    config["zero_optimization"].update({"reduce_bucket_size": hidden * hidden,
                                        "stage3_param_persistence_threshold": 10 * hidden,
                                        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden)})
    engine, *_ = deepspeed.initialize(model=ref_model, config=config)
    engine.eval()  # DeepSpeedEngine.eval returns None
    return engine


def local_device() -> torch.device:
    """This process's device before any Accelerator exists: cuda:LOCAL_RANK, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@dataclass(frozen=True)
class Processes:
    """This process's rank among ``size`` and the collectives the loop needs (no-ops for one)."""

    rank: int = 0
    size: int = 1
    device: torch.device | str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def gather_rows(self, local: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """All processes' (B,) rows concatenated in rank order, and the slice that is this process's."""
        mine = slice(self.rank * local.shape[0], (self.rank + 1) * local.shape[0])
        if self.size == 1:
            return local, mine
        parts = [torch.empty_like(local, device=self.device) for _ in range(self.size)]
        dist.all_gather(parts, local.to(self.device))
        return torch.cat(parts).to(local.device), mine

    def sum(self, value: torch.Tensor | float) -> torch.Tensor:
        """Sum of a scalar over processes (a float32 tensor)."""
        tensor = torch.as_tensor(value, dtype=torch.float32).to(self.device)
        if self.size > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def min(self, value: int) -> int:
        """Smallest integer over processes."""
        return self._reduce_int(value, dist.ReduceOp.MIN)

    def max(self, value: int) -> int:
        """Largest integer over processes."""
        return self._reduce_int(value, dist.ReduceOp.MAX)

    def _reduce_int(self, value: int, op) -> int:
        if self.size == 1:
            return int(value)
        tensor = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(tensor, op=op)
        return int(tensor.item())

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average metrics over processes (keys ending in ``max``/``min`` take the max/min).

        Processes may log different keys (a pass rate exists only where a batch was all 0/1): the
        key sets are gathered first and a key is reduced over the processes that have it.
        """
        if self.size == 1:
            return metrics
        key_sets: list[Any] = [None] * self.size
        dist.all_gather_object(key_sets, sorted(metrics))
        keys = sorted(set().union(*key_sets))
        values = torch.tensor([float(metrics.get(k, math.nan)) for k in keys], device=self.device)
        parts = [torch.empty_like(values) for _ in range(self.size)]
        dist.all_gather(parts, values)
        gathered = torch.stack(parts).cpu()  # (processes, keys)
        out = {}
        for i, key in enumerate(keys):
            column = gathered[:, i][~torch.isnan(gathered[:, i])]
            if column.numel():
                reduced = column.max() if key.endswith("max") else column.min() if key.endswith("min") else column.mean()
                out[key] = float(reduced)
        return out


def processes(device: torch.device | str = "cpu") -> Processes:
    """The process group as torch.distributed sees it (one process when it is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return Processes(rank=dist.get_rank(), size=dist.get_world_size(), device=device)
    return Processes(device=device)


def check_replicas(model: torch.nn.Module, procs: Processes, zero: int) -> float | None:
    """Fail when the processes' copies of the weights differ -> the weights' checksum (None when
    there is nothing to compare: one process, or ZeRO-3, whose parameters are partitions).

    DDP and ZeRO-2 keep a full replica per process that every optimizer step must leave bitwise
    equal; ranks that drifted apart (gradients never all-reduced) would otherwise finish "successfully"
    and save rank 0's copy alone.
    """
    if procs.size == 1 or zero == 3:
        return None
    names, sums = [], []
    with torch.no_grad():
        for name, param in model.named_parameters():  # one float64 copy at a time, not the model's
            wide = param.detach().double()
            names.append(name)
            sums.append(wide.sum() + (wide * wide).sum())
    sums = torch.stack(sums)  # (params,)
    parts = procs.gather_rows(sums)[0].view(procs.size, -1).cpu()  # (processes, params)
    for rank, other in enumerate(parts[1:], start=1):
        differ = (other != parts[0]).nonzero().flatten().tolist()
        if differ:
            from posttrain.errors import StageFailed

            raise StageFailed(f"after training, process {rank}'s weights differ from process 0's in {len(differ)} of "
                              f"{len(names)} tensors (first: {names[differ[0]]}): the processes' gradients were not "
                              "synchronised, so the model is not the one the whole batch trained")
    return float(parts[0].sum())
