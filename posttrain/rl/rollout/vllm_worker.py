"""Code that runs inside vLLM's worker (in V1 multiprocess mode: in the engine-core process under
the uni-process executor, or in a child of it under the multiproc executor, which vLLM forces on CPU).

:class:`WeightSyncExtension` is mixed into vLLM's worker class through
``LLM(worker_extension_cls="posttrain.rl.rollout.vllm_worker.WeightSyncExtension")``, so the
engine calls its methods by name with ``LLM.collective_rpc("posttrain_...")``: no function is
pickled, only strings (file paths) cross the process boundary in multiprocess mode, and in-process
the weights iterator is handed over as is.

Why not ``model.load_weights`` per tensor: on CPU, vLLM prepacks float32 linear weights into
oneDNN / sgl-kernel handles held by ``layer.cpu_linear`` and replaces ``layer.weight`` with an
empty parameter, so loading into the live model fails. vLLM 0.32's in-place
``reload_weights`` (model_loader/reload) instead restores every layer's checkpoint-format
parameters on the meta device, loads, re-runs ``process_weights_after_loading`` (which re-packs)
and copies the result into the original kernel tensors.

Its documented limitation 2 is the trap: a tied parameter is processed only through its first
owner. With ``tie_word_embeddings`` the checkpoint has no ``lm_head.weight``, the embedding is
reloaded and re-processed, but ``lm_head`` (a ``ParallelLMHead`` sharing that parameter) loads
nothing, gets its old kernel tensors placed back, and keeps the ``cpu_linear`` handle packed from
the *old* embedding: the logits come from stale weights while the embedding lookup is new.
:func:`refresh_tied_layers` re-runs the unquantized method's ``process_weights_after_loading``
on every layer that shares a parameter with another layer, which re-packs ``lm_head`` from the
current (shared, freshly loaded) weight. On CUDA that method is a no-op (the weight is shared, no
prepacking), so the refresh is harmless there.
"""
from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterable, Iterator

import torch


def iter_safetensors(paths: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream ``(name, tensor)`` from safetensors files (memory-mapped reads).

    Files from :func:`~posttrain.rl.rollout.weights.write_safetensors_shards` replay the written
    order (module by module); other files yield their keys in stored (sorted) order.
    """
    from safetensors import safe_open

    from posttrain.rl.rollout.weights import ORDER_KEY

    for path in paths:
        with safe_open(path, framework="pt", device="cpu") as handle:
            order = (handle.metadata() or {}).get(ORDER_KEY)
            for name in json.loads(order) if order else handle.keys():
                yield name, handle.get_tensor(name)


def refresh_tied_layers(model: torch.nn.Module) -> list[str]:
    """Re-process layers whose weight is shared with another layer; return their names.

    Only unquantized embedding-style layers (the tied ``lm_head``) are refreshed: for them
    ``process_weights_after_loading`` just (re)builds the CPU GEMM dispatch from ``layer.weight``.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    owners: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append((name, module))
    refreshed = []
    for sharing in owners.values():
        if len(sharing) < 2:
            continue
        for name, module in sharing:
            method = getattr(module, "quant_method", None)
            if isinstance(method, UnquantizedEmbeddingMethod):
                method.process_weights_after_loading(module)
                refreshed.append(name)
    return refreshed


class WeightSyncExtension:
    """Worker mix-in: in-place weight reload that also refreshes tied layers.

    Methods are prefixed ``posttrain_`` so they cannot clash with vLLM's own worker methods
    (vLLM refuses an extension that overrides one).
    """

    def posttrain_load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> dict:
        """Reload from an iterable of ``(hf_name, tensor)`` (in-process engines only)."""
        return _reload(self, iter(weights))

    def posttrain_load_weights_from_files(self, paths: list[str]) -> dict:
        """Reload from safetensors files written by the trainer (any engine mode)."""
        return _reload(self, iter_safetensors(paths))

    def posttrain_release_process_groups(self) -> int:
        """Destroy the worker's torch.distributed groups when it is alone (world size 1); return
        how many vLLM group coordinators were released (0 when it is not alone).

        vLLM creates a device and a CPU group for each of its world, TP, DCP, PCP, PP and DP
        coordinators even for one worker (vllm/distributed/parallel_state.py); on CPU all are gloo,
        and each gloo group runs a TCP loop thread that wakes every 10 ms (13 threads, ~1300
        wakeups/s) and preempts the trainer's compute threads on a small machine: the update ran
        46% slower beside the engine (benchmarks/README.md). With one worker every collective
        returns before touching a group, so the coordinators keep working without them. Call
        only for a worker in its own process: in-process, the default group is the trainer's."""
        import torch.distributed as dist
        from vllm.distributed import parallel_state

        if self.parallel_config.world_size != 1 or self.parallel_config.data_parallel_size != 1:
            return 0
        released: dict[int, object] = {}
        for name in ("_WORLD", "_INNER_DP_WORLD", "_TP", "_ETP", "_DCP", "_PCP", "_PP", "_DP", "_ENGRAM_DP", "_EP",
                     "_EPLB"):
            coordinator = getattr(parallel_state, name, None)
            if coordinator is not None and id(coordinator) not in released:
                released[id(coordinator)] = coordinator
                coordinator.destroy()
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()  # the groups' threads stop when the last reference goes
        return len(released)


def _reload(worker, weights: Iterator[tuple[str, torch.Tensor]]) -> dict:
    start = time.perf_counter()
    model = worker.model_runner.get_model()
    # Worker.reload_weights sets the current vLLM config and calls reload.inplace.reload_weights.
    worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    reloaded_s = time.perf_counter() - start
    refreshed = refresh_tied_layers(model)
    return {"reload_s": reloaded_s, "total_s": time.perf_counter() - start,
            "refreshed": refreshed}
