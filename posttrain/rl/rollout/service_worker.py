"""The rollout worker process of server mode (``rollout: {mode: server}``): one engine (hf or
vllm) in its own process, answering the trainer's requests in arrival order over a pipe.

Requests are ``(request_id, op, payload)``:

- ``generate`` ``(prompts, sampling, from_ids)`` -> a RolloutBatch whose ``metadata`` names the
  ``weight_version`` it was sampled with;
- ``score`` ``(sequences,)`` -> per-token log-probs under the served weights (the sync probe);
- ``load`` ``(version, probe)`` -> the trainer's shared-memory weights are copied into the engine
  and become ``version``; the answer carries the probe sequences' log-probs under them;
- ``close``.

Answers are ``(request_id, "ok", result, timing)`` or ``(request_id, "error", message, timing)``;
``timing`` holds the seconds spent busy on the request and idle (waiting for it) before. Because
one process answers in order, a ``load`` queued behind a ``generate`` takes effect after it: the
trainer relies on that order for its staleness accounting (posttrain.rl.loop.pipeline).

The worker exits when the trainer's end of the pipe closes (the trainer died), so a killed run
leaves no orphan engines behind.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class WorkerSpec:
    """Everything a worker process needs to start (pickled to the spawned process)."""

    index: int
    engine: str                     # hf | vllm
    model_path: str
    options: dict[str, Any]         # the engine's constructor options
    weights: dict[str, torch.Tensor]  # the trainer's shared-memory copy of the policy (HF names)
    version: int = 0                # the version those weights hold (0: the model at model_path)
    threads: int | None = None      # torch threads of the worker (None: torch's default)
    env: dict[str, str] = field(default_factory=dict)


def serve(conn, spec: WorkerSpec) -> None:
    """The worker's main loop (the target of the spawned process)."""
    import os

    os.environ.update(spec.env)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        engine, tokenizer = _start(spec)
    except BaseException:  # noqa: BLE001 - the trainer reports it, naming this worker
        conn.send((-1, "error", traceback.format_exc(limit=4), {}))
        return
    version = spec.version
    conn.send((-1, "ready", {"pid": os.getpid(), "version": version}, {}))
    idle_since = time.perf_counter()
    while True:
        try:
            request_id, op, payload = conn.recv()
        except (EOFError, OSError):  # the trainer is gone
            break
        start = time.perf_counter()
        timing = {"idle_s": start - idle_since}
        try:
            if op == "close":
                conn.send((request_id, "ok", None, timing))
                break
            if op == "load":
                version = payload[0]
                result = _load(engine, spec.weights, version, payload[1])
            elif op == "generate":
                result = _generate(engine, tokenizer, version, *payload)
            elif op == "score":
                result = engine.score(payload[0])
            else:
                raise ValueError(f"unknown request {op!r}")
            status = "ok"
        except Exception:  # noqa: BLE001 - sent back: the trainer raises it with this worker's name
            status, result = "error", traceback.format_exc(limit=6)
        idle_since = time.perf_counter()
        timing["busy_s"] = idle_since - start
        try:
            conn.send((request_id, status, result, timing))
        except (BrokenPipeError, OSError):
            break
    engine.close()


def _start(spec: WorkerSpec):
    from transformers import AutoTokenizer

    from posttrain.rl.rollout import make_engine

    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    engine = make_engine(spec.engine, spec.model_path, tokenizer, **spec.options)
    if spec.version:  # a restarted worker serves what the trainer last synced
        engine.load_weights(iter(spec.weights.items()))
    return engine, tokenizer


def _load(engine, weights: dict[str, torch.Tensor], version: int, probe: list[list[int]]) -> dict:
    start = time.perf_counter()
    engine.load_weights(iter(weights.items()))
    loaded = time.perf_counter() - start
    return {"version": version, "load_s": loaded, "probe": engine.score(probe) if probe else None}


def _generate(engine, tokenizer, version: int, prompts, sampling, from_ids: bool):
    batch = engine.generate_ids(prompts, sampling) if from_ids else engine.generate(prompts, sampling)
    batch.metadata["weight_version"] = version
    return batch
