"""The rollout worker process of server mode (``rollout: {mode: server}``): one engine (hf or
vllm) in its own process, answering the trainer's requests in arrival order over a pipe.

Requests are ``(request_id, op, payload)``:

- ``generate`` ``(prompts, sampling, from_ids)`` -> a RolloutBatch whose ``metadata`` names the
  ``weight_version`` it was sampled with;
- ``episodes`` ``(rows, sampling, environment, max_tokens, key)`` -> ``sampling.n`` multi-turn
  episodes per row (posttrain.agents.episodes), played in this process against its engine, so
  every turn of an episode samples with one weights version: the unit of asynchronous work;
- ``score`` ``(sequences,)`` -> per-token log-probs under the served weights (the sync probe);
- ``load`` ``(version, probe, copy)`` -> the trainer's shared-memory copy number ``copy`` is
  loaded into the engine and becomes ``version``; the answer carries the probe sequences' log-probs under them. With
  ``(version, probe, "broadcast")`` the weights arrive over the worker's weight channel instead
  (posttrain.rl.rollout.broadcast), each tensor loaded as it comes;
- ``join`` ``(host, port, backend, timeout_s)`` -> open (or replace) that channel to the trainer;
- ``close``.

Answers are ``(request_id, "ok", result, timing)`` or ``(request_id, "error", message, timing)``;
``timing`` holds the seconds spent busy on the request and idle (waiting for it) before. Because
one process answers in order, a ``load`` queued behind a ``generate`` takes effect after it: the
trainer relies on that order for its staleness accounting (posttrain.rl.loop.pipeline).

The worker exits when the trainer's end of the pipe closes (the trainer died), so a killed run
leaves no orphan engines behind.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from posttrain.rl.rollout.broadcast import BROADCAST


@dataclass
class WorkerSpec:
    """Everything a worker process needs to start (pickled to the spawned process)."""

    index: int
    engine: str                     # hf | vllm
    model_path: str
    options: dict[str, Any]         # the engine's constructor options
    weights: dict[str, torch.Tensor]  # the shared-memory copy to start from (HF names; empty with broadcast)
    buffers: list[dict[str, torch.Tensor]] = field(default_factory=list)  # the copies a load names by index
    version: int = 0                # the version those weights hold (0: the model at model_path)
    threads: int | None = None      # torch threads of the worker (None: torch's default)
    retain_freed_memory: bool = False  # keep freed heap memory (posttrain.common.memory.retained_heap)
    endpoint_port: int | None = None  # serve the OpenAI-compatible endpoint on this port (0: any free one)
    local_rank: int = 0             # the training process on this machine that owns the worker
    workers: int = 1                # how many it owns: worker i of local process r listens on port + r x workers + i
    manifest: list | None = None    # weight_transport broadcast: the tensors each load receives (broadcast.Manifest)
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def worker_process(spec: WorkerSpec):
    """The worker process's settings for as long as it serves: its environment, torch threads, and
    the retained heap (every generation's KV cache otherwise faults in anew)."""
    import os

    from posttrain.common.memory import retained_heap

    os.environ.update(spec.env)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    with retained_heap(spec.retain_freed_memory):
        yield


def serve(conn, spec: WorkerSpec) -> None:
    """The worker's main process (the target of the spawned process)."""
    with worker_process(spec):
        _serve(conn, spec)


def _serve(conn, spec: WorkerSpec) -> None:
    try:
        worker = RolloutWorker(spec)
    except BaseException:  # noqa: BLE001 - the trainer reports it, naming this worker
        conn.send((-1, "error", traceback.format_exc(limit=4), {}))
        return
    conn.send((-1, "ready", worker.ready_info(), {}))
    # A reader thread takes requests off the pipe as they come, so the trainer never blocks sending
    # one while this process is busy generating or sending a large answer (both ends would wait).
    requests: queue.Queue = queue.Queue()
    threading.Thread(target=_read_requests, args=(conn, requests), name="posttrain-requests", daemon=True).start()
    while True:
        message = requests.get()
        if message is None:  # the trainer is gone
            break
        request_id, op, payload = message
        if op == "close":
            conn.send((request_id, "ok", None, {}))
            break
        try:
            conn.send((request_id, *worker.handle(op, payload)))
        except (BrokenPipeError, OSError):
            break
    worker.close()


def _read_requests(conn, requests: queue.Queue) -> None:
    while True:
        try:
            requests.put(conn.recv())
        except (EOFError, OSError):
            requests.put(None)
            return


class RolloutWorker:
    """One engine and the version of the weights it serves: what a worker process (or a Ray actor,
    posttrain.rl.rollout.ray_service) runs. ``handle`` answers one request."""

    def __init__(self, spec: WorkerSpec):
        from transformers import AutoTokenizer

        from posttrain.rl.rollout import make_engine

        self.spec = spec
        self.lock = threading.Lock()  # the engine serves the trainer's requests and the endpoint's one at a time
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
        self.engine = make_engine(spec.engine, spec.model_path, self.tokenizer, **spec.options)
        self.version = spec.version
        if spec.version:  # a restarted worker serves what the trainer last synced
            self.engine.load_weights(iter(spec.weights.items()))
        self.endpoint = self._start_endpoint() if spec.endpoint_port is not None else None
        self.endpoint_url = self.endpoint.url if self.endpoint is not None else None
        self.runners: dict[str, Any] = {}  # episode runners by environment block (built on first use)
        self.channel = None  # weight_transport broadcast: the channel to the trainer (a `join` opens it)
        self.idle_since = time.perf_counter()

    def _start_endpoint(self):
        from posttrain.errors import ConfigError
        from posttrain.rl.rollout.openai_endpoint import Endpoint

        spec = self.spec
        port = spec.endpoint_port + spec.local_rank * spec.workers + spec.index if spec.endpoint_port else 0
        try:
            return Endpoint(self, port, model_name=spec.model_path)
        except OSError as exc:
            raise ConfigError(f"rollout.endpoint_port {spec.endpoint_port}: worker {spec.index} of local training process "
                              f"{spec.local_rank} cannot listen on "
                              f"127.0.0.1:{port} ({exc.strerror}); worker i of local process r uses endpoint_port + "
                              "r x workers + i, or 0 for any free port") from None

    def handle(self, op: str, payload: tuple) -> tuple[str, Any, dict]:
        """-> (status "ok" | "error", result or traceback, timing: idle before and busy seconds)."""
        with self.lock:
            return self._handle(op, payload)

    def _handle(self, op: str, payload: tuple) -> tuple[str, Any, dict]:
        from posttrain.errors import PosttrainError

        start = time.perf_counter()
        timing = {"idle_s": start - self.idle_since}
        try:
            if op == "records":
                result = self.endpoint.drain() if self.endpoint is not None else []
            elif op == "load":  # (version, probe[, the copy's index; the weights (Ray); or "broadcast"])
                source = payload[2] if len(payload) > 2 else self.spec.weights
                result = self._load(self.spec.buffers[source] if isinstance(source, int) else source, *payload[:2])
            elif op == "join":
                result = self._join(*payload)
            elif op == "generate":
                result = self._generate(*payload)
            elif op == "episodes":
                result = self._episodes(*payload)
            elif op == "score":
                result = self.engine.score(payload[0])
            else:
                raise ValueError(f"unknown request {op!r}")
            status = "ok"
        except PosttrainError as exc:  # ours, and it says what failed (e.g. an environment failing too often)
            status, result = "error", f"{type(exc).__name__}: {exc}"
        except Exception:  # noqa: BLE001 - sent back: the trainer raises it with this worker's name
            status, result = "error", traceback.format_exc(limit=6)
        self.idle_since = time.perf_counter()
        timing["busy_s"] = self.idle_since - start
        return status, result, timing

    def ready_info(self) -> dict:
        """What the trainer learns once the engine is up (the Ray actor sends it too)."""
        import os

        from posttrain.rl.rollout.broadcast import cuda_uuid

        device = self._engine_device()
        return {"pid": os.getpid(), "version": self.version, "endpoint": self.endpoint_url,
                "context_limit": getattr(self.engine, "context_limit", None),
                "cuda_uuid": cuda_uuid(device) if device.type == "cuda" else None}

    def _engine_device(self) -> torch.device:
        """Where the engine holds its weights: the hf engine's module's device; vLLM's GPU where
        vLLM runs on CUDA (the worker's current device), else the CPU."""
        model = getattr(self.engine, "model", None)
        if isinstance(model, torch.nn.Module):
            return next(model.parameters()).device
        if self.spec.engine == "vllm" and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _join(self, host: str, port: int, backend: str, timeout_s: float) -> dict:
        from posttrain.rl.rollout.broadcast import Channel

        if self.channel is not None:
            self.channel.close()
        self.channel = Channel.join(host, port, backend, timeout_s,
                                    what=f"rollout worker {self.spec.index}'s weight channel")
        return {"backend": backend}

    def _load(self, weights: dict[str, torch.Tensor] | str, version: int, probe: list[list[int]]) -> dict:
        start = time.perf_counter()
        if weights == BROADCAST:
            self._receive_weights()
        else:
            self.engine.load_weights(iter(weights.items()))
        self.version = version
        loaded = time.perf_counter() - start
        return {"version": version, "load_s": loaded, "probe": self.engine.score(probe) if probe else None}

    def _receive_weights(self) -> None:
        """Load the tensors as they arrive over the channel; what is left after an error is still
        received (so the trainer's broadcast ends) before the error goes back."""
        from posttrain.rl.rollout.broadcast import drain

        if self.channel is None:
            raise RuntimeError("a broadcast load came before the trainer opened the weight channel (join)")
        tensors = self.channel.receive(self.spec.manifest)
        try:
            self.engine.load_weights(tensors)
        finally:
            drain(tensors)

    def _generate(self, prompts, sampling, from_ids: bool):
        engine = self.engine
        batch = engine.generate_ids(prompts, sampling) if from_ids else engine.generate(prompts, sampling)
        batch.metadata["weight_version"] = self.version
        return batch

    def _episodes(self, rows, sampling, environment, max_tokens: int, key: str):
        """Play the rows' episodes here; the environment (and its tools) load in this process by
        reference, as the trainer's own runner would load them."""
        from posttrain.agents.session import build_episode_runner

        name = f"{environment.model_dump_json()}|{max_tokens}"
        if name not in self.runners:
            self.runners[name] = build_episode_runner(environment, self.tokenizer, max_tokens, key=key)
        batch = self.runners[name].run(self.engine, rows, sampling)
        batch.metadata["weight_version"] = self.version
        return batch

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        for runner in self.runners.values():
            runner.close()
        if self.endpoint is not None:
            self.endpoint.close()
        with self.lock:  # an endpoint request still sampling finishes first
            self.engine.close()
