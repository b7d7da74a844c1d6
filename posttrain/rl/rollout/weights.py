"""The policy's full weights under Hugging Face names, one module at a time.

:func:`iter_full_state_dict` is what every weight sync reads: it unwraps DeepSpeed / DDP /
``torch.compile`` wrappers, gathers ZeRO-3 partitions one module at a time (so the full model
never exists twice in memory), merges LoRA adapters into copies of the affected weights (the
training weights are never modified, so repeated syncs cannot drift), and names every tensor the
way the base model's ``state_dict`` does (``model.layers.0.self_attn.q_proj.weight``), which is
what vLLM's ``load_weights`` expects. Tied weights come once, under their first name
(``model.embed_tokens.weight``; the tied ``lm_head.weight`` is not repeated).

:func:`write_safetensors_shards` streams the same iterator into size-bounded safetensors files,
the transport into a vLLM engine core that runs in another process.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from posttrain.errors import ConfigError

# Where torch.Tensor.share_memory_ puts a CPU tensor on Linux (shm_open), under either sharing strategy.
SHARED_MEMORY = "/dev/shm"

# safetensors metadata key holding the tensor names in the order they were written.
ORDER_KEY = "posttrain.order"

# Containers whose real module sits in `.module` (DeepSpeedEngine, DDP, FSDP1, accelerate wrappers).
_WRAPPER_CLASS_NAMES = ("DeepSpeedEngine", "DistributedDataParallel", "DataParallel",
                        "FullyShardedDataParallel")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The innermost trainable module: strips DeepSpeed/DDP wrappers, torch.compile and PEFT.

    For a PEFT model the result is the base transformers model *with the LoRA layers still
    injected* (``PeftModel.get_base_model()``); :func:`iter_full_state_dict` merges them.
    """
    model = strip_wrappers(model)  # DeepSpeed/DDP wrappers and torch.compile's OptimizedModule stripped
    if _is_peft_model(model):
        model = model.get_base_model()
    return model


def _is_peft_model(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep the plain path importable without it
        return False
    return isinstance(model, PeftModel)


def strip_wrappers(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` without its DeepSpeed/DDP wrappers and torch.compile (a PeftModel stays one)."""
    while type(model).__name__ in _WRAPPER_CLASS_NAMES and hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def is_peft_model(model: torch.nn.Module) -> bool:
    """True for a peft model, also inside DeepSpeed/DDP wrappers (its adapters can be synced alone)."""
    return _is_peft_model(strip_wrappers(model))


def is_zero3(model: torch.nn.Module) -> bool:
    """True when ``model``'s parameters are ZeRO-3 partitions (DeepSpeed tags them with ds_id)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def gathered(params: list[torch.nn.Parameter]):
    """Materialise ZeRO-3 partitions of ``params`` for the duration of the block (read-only; a
    collective under ZeRO-3: every rank enters it; a no-op for ordinary parameters)."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed  # only reachable when DeepSpeed created the partitions

    # modifier_rank=None: nothing is written back, every rank sees the full tensors.
    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def iter_full_state_dict(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full_tensor)`` for every distinct parameter of ``model``, module by module.

    ``model`` may be a plain ``PreTrainedModel``, a PEFT model (LoRA merged into copies), a
    DeepSpeed engine or DDP wrapper, or any of these under ZeRO-3. Under ZeRO-3 this is a
    collective: every rank must consume the iterator to the end, in the same order. Yielded
    tensors are detached; under ZeRO-3 or LoRA they are fresh copies the caller may keep, otherwise
    they alias the live parameters (copy them if training continues while you hold them).

    >>> sd = dict(iter_full_state_dict(model))   # doctest: +SKIP
    """
    root = unwrap_model(model)
    zero3 = is_zero3(root)
    seen: set[int] = set()
    skip_prefixes: list[str] = []
    for module_name, module in root.named_modules():
        if any(module_name.startswith(p) for p in skip_prefixes):
            continue
        if _is_lora_layer(module) or _is_modules_to_save(module):
            # Handled as a unit: the children (base_layer, lora_A, original_module...) are not
            # separate HF weights.
            skip_prefixes.append(module_name + ".")
            yield from _merged_unit(module_name, module, zero3, seen)
            continue
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        if not own:
            continue
        seen.update(id(p) for _, p in own)
        with gathered([p for _, p in own]):
            for name, param in own:
                tensor = param.detach()
                yield _join(module_name, name), (tensor.clone() if zero3 else tensor)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_lora_layer(module: torch.nn.Module) -> bool:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    return isinstance(module, LoraLayer)


def _is_modules_to_save(module: torch.nn.Module) -> bool:
    try:
        from peft.utils import ModulesToSaveWrapper
    except ImportError:
        return False
    return isinstance(module, ModulesToSaveWrapper)


def _merged_unit(module_name: str, module: torch.nn.Module, zero3: bool,
                 seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    """The HF weights of one PEFT-wrapped module: LoRA merged, or the active saved copy."""
    params = list(module.parameters())
    seen.update(id(p) for p in params)
    with gathered(params):
        if _is_modules_to_save(module):
            active = module.active_adapters
            target = module.modules_to_save[active[0]] if active else module.original_module
            for name, param in target.named_parameters():
                yield _join(module_name, name), param.detach().clone()
            return
        base = module.get_base_layer()
        yield _join(module_name, "weight"), _merged_lora_weight(module, base)
        bias = getattr(base, "bias", None)
        if bias is not None:
            yield _join(module_name, "bias"), _merged_lora_bias(module, bias)


def _unmerged_adapters(module) -> list[str]:
    adapters = list(getattr(module, "lora_A", {}).keys()) + list(
        getattr(module, "lora_embedding_A", {}).keys())
    return [a for a in module.active_adapters if a in adapters and a not in module.merged_adapters]


def _merged_lora_weight(module, base: torch.nn.Module) -> torch.Tensor:
    """base.weight + sum of active, not yet merged adapters' deltas, computed on a copy."""
    weight = base.weight.detach().clone()
    with torch.no_grad():
        for adapter in _unmerged_adapters(module):
            variant = getattr(module, "lora_variant", {}).get(adapter)
            if variant is not None:  # DoRA and friends know how to merge into a copy
                weight = variant.merge_safe(module, adapter, weight)
            else:
                weight += module.get_delta_weight(adapter).to(weight.dtype)
    return weight


def _merged_lora_bias(module, bias: torch.Tensor) -> torch.Tensor:
    merged = bias.detach().clone()
    with torch.no_grad():
        for adapter in _unmerged_adapters(module):
            if getattr(module, "lora_bias", {}).get(adapter):
                merged += module.lora_B[adapter].bias * module.scaling[adapter]
    return merged


def write_safetensors_shards(tensors: Iterator[tuple[str, torch.Tensor]], out_dir: str | Path,
                             max_shard_bytes: int = 1 << 30) -> list[str]:
    """Write ``tensors`` to ``out_dir/shard-00000.safetensors``... in order; return the paths.

    A shard is flushed once it holds ``max_shard_bytes``, so at most one shard (plus one gathered
    module) is in memory at a time. Tensors are stored contiguous, on CPU, in their own dtype.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal shard, size
        path = out_dir / f"shard-{len(paths):05d}.safetensors"
        # safetensors stores keys sorted; the order (module by module) rides in the metadata so
        # the reader can replay it and vLLM finishes each layer before the next one arrives.
        save_file(shard, str(path), metadata={ORDER_KEY: json.dumps(list(shard))})
        paths.append(str(path))
        shard, size = {}, 0

    for name, tensor in tensors:
        if name in shard:
            raise ConfigError(f"weight {name} appears twice in the model's state dict")
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().nbytes() != tensor.nbytes:
            # safetensors refuses tensors that share storage (views into one flat buffer).
            tensor = tensor.clone()
        shard[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= max_shard_bytes:
            flush()
    if shard or not paths:
        flush()
    return paths


def check_shared_memory(nbytes: int, copies: int, processes: int = 1, folder: str = SHARED_MEMORY) -> None:
    """Stop, naming what lowers it, when shared memory cannot hold the rollout service's weight
    copies: ``copies`` of ``nbytes`` each (copy transport: one float32 copy per step of
    ``rollout.max_staleness``), for each of the node's ``processes`` training processes (each
    starts its own service). This process's copies must fit in ``folder``'s free space, and every
    process's in its size (they start together, so the free space may already hold the others').
    A container's default /dev/shm is 64 MB; torch otherwise fails deep in ``share_memory_``, or
    the process dies of SIGBUS when a page cannot be backed."""
    if not Path(folder).is_dir():
        return  # not Linux: torch shares memory another way
    usage, gib = shutil.disk_usage(folder), 1024 ** 3
    own, node = nbytes * copies, nbytes * copies * processes
    if own <= usage.free and node <= usage.total:
        return
    copies_text = f"{copies} float32 {'copy' if copies == 1 else 'copies'} of the policy's weights"
    if own > usage.free:
        problem = (f"the rollout workers load the policy's weights from {copies_text} in shared memory "
                   f"({own / gib:.2f} GiB), but {folder} has {usage.free / gib:.2f} GiB free")
    else:
        problem = (f"the node's {processes} training processes each keep {copies_text} in shared memory for "
                   f"their rollout workers ({node / gib:.2f} GiB in all), but {folder} holds {usage.total / gib:.2f} GiB")
    fixes = ["lower rollout.max_staleness (one copy per step of staleness)"] if copies > 1 else []
    fixes += ["set rollout.weight_transport: broadcast (no copy)",
              "give the machine more shared memory (docker run --shm-size)"]
    raise ConfigError(f"rollout: {problem}. To fix it, {', '.join(fixes[:-1])} or {fixes[-1]}.")
