"""What a stage's `distributed` block asks for, in the forms the launcher and the trainers need.

One definition of the DeepSpeed JSON serves every path that can start DeepSpeed: the launcher
writes it to `deepspeed.json` for `accelerate launch` and the HF Trainer, and the RL loop builds
its DeepSpeedPlugin from it directly, so a stage started by torchrun (no accelerate config in
the environment) runs under the same ZeRO settings.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from posttrain.common.config import DistributedConfig


def uses_launcher(dist: DistributedConfig) -> bool:
    """True when the stage runs in launched worker processes: more than one process, DeepSpeed, or
    Ray placing its process(es).

    ZeRO with one process is launched too (one worker): DeepSpeed needs the process group and
    the environment a launcher sets up, and a single GPU is where CPU offload matters most.
    """
    return dist.processes * dist.nodes > 1 or dist.zero > 0 or dist.launcher == "ray"


def deepspeed_config(dist: DistributedConfig) -> dict[str, Any]:
    """The DeepSpeed JSON for ZeRO stage 2 or 3; "auto" values are filled by the HF Trainer
    integration (offline stages) or by posttrain.rl.loop.dist.make_accelerator (RL stages)."""
    zero: dict[str, Any] = {"stage": dist.zero, "overlap_comm": False, "contiguous_gradients": True}
    if dist.offload in ("optimizer", "params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if dist.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if dist.zero == 3:
        # Without this, accelerator.get_state_dict cannot consolidate the shards for saving.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        # torch AdamW instead of DeepSpeedCPUAdam (no C++ JIT build), also with optimizer offload.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "wall_clock_breakdown": False,
    }


def describe(config) -> str:
    """One line on how a stage will run, for ``posttrain validate``: where its processes come from,
    whether DeepSpeed runs it (ZeRO stage, offload), and for stages that train adapters, LoRA.

    >>> from posttrain.common.config import DistributedConfig
    >>> from types import SimpleNamespace
    >>> describe(SimpleNamespace(distributed=DistributedConfig(zero=3, offload="params")))
    '1 launched process, DeepSpeed ZeRO-3 with optimizer and parameter offload to CPU'
    """
    dist = config.distributed
    total = dist.processes * dist.nodes
    if not uses_launcher(dist):
        where = "in the runner's process"
    else:
        where = f"{total} launched process{'es' if total > 1 else ''}" + (f" on {dist.nodes} nodes" if dist.nodes > 1 else "")
        where += f" ({dist.launcher})" if dist.launcher != "accelerate" else ""
    if dist.zero:
        offload = {"none": "", "optimizer": " with optimizer offload to CPU",
                   "params": " with optimizer and parameter offload to CPU"}[dist.offload]
        where += f", DeepSpeed ZeRO-{dist.zero}{offload}"
    elif total > 1:
        where += ", DDP"
    lora = getattr(config, "lora", None)
    if lora is not None:
        where += f"; LoRA r={lora.r} alpha={lora.alpha} ({'merged' if lora.merge else 'adapter'} output)"
    return where


def training_setup(model: Any, processes: int) -> dict[str, Any]:
    """What really ran a stage's training, for its summary (RL loop and offline stages alike): the
    wrapper accelerate built around the model (DistributedDataParallel, DeepSpeedEngine, or the
    module itself), the ZeRO stage and offload the DeepSpeed engine reports, and the process count."""
    setup: dict[str, Any] = {"processes": processes, "wrapper": type(model).__name__, "zero": 0, "offload": "none"}
    if setup["wrapper"] == "DeepSpeedEngine":
        setup["zero"] = int(model.zero_optimization_stage())
        setup["offload"] = "params" if model.zero_offload_param() else "optimizer" if model.zero_offload_optimizer() else "none"
    return setup
