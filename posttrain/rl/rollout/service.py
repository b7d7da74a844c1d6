"""Server mode: rollout workers in their own processes, behind the RolloutEngine API.

:class:`RolloutService` starts ``workers`` processes (posttrain.rl.rollout.service_worker), each
hosting its own engine (hf or vllm), and splits every generate call over them by prompt groups.
Weights reach the workers through shared memory: a sync copies the trainer's weights into a
float32 copy in shared tensors and queues a ``load`` to every worker; with ``weight_buffers=k``
copies taking turns (posttrain.rl.rollout.service_copy).

Requests are asynchronous: :meth:`RolloutService.submit_generate` returns at once and
:meth:`RolloutService.collect` waits for the batch, which is what lets the trainer update while the
workers generate (posttrain.rl.loop.pipeline). Every wait has a timeout naming the worker and the
request. A worker that dies is restarted (from the last synced weights) and its unanswered
requests are sent again, counted in ``stats()``; after ``max_restarts`` restarts of one worker
the stage stops, naming it.

With ``weight_transport="broadcast"`` no copy is kept: each worker has its own weight channel to
the trainer, and a sync streams the tensors into it (posttrain.rl.rollout.service_broadcast).
"""
from __future__ import annotations

import collections
import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from posttrain.rl.rollout.service_broadcast import BROADCAST, BroadcastSync
from posttrain.rl.rollout.service_copy import CopySync
from posttrain.rl.rollout.service_worker import WorkerSpec, serve
from posttrain.rl.rollout.types import RolloutBatch, RolloutWorkerError, SamplingConfig, check_batch

__all__ = ["PendingRollout", "RolloutService", "RolloutWorkerError", "Ticket"]


@dataclass
class Ticket:
    """One request to one worker; ``result`` is set once the worker answered."""

    id: int
    worker: int
    op: str
    payload: tuple
    sent: float = field(default_factory=time.perf_counter)
    done: bool = False
    result: Any = None
    ref: Any = None                 # Ray placement: the actor call's ObjectRef


def restarted_load(version: int) -> dict:
    """The answer of a load that a worker's restart made: it starts from (or was sent) ``version``
    and scored no probe."""
    return {"version": version, "probe": None, "restarted": True}


@dataclass
class LoadGroup:
    """One sync's loads (a ticket per worker) and the weight copy they read (0 without copies)."""

    version: int
    buffer: int
    tickets: list[Ticket]


@dataclass
class PendingRollout:
    """A generate call split over workers: one ticket per worker with a share of the prompts."""

    tickets: list[Ticket]
    prompt_offsets: list[int]      # index of each share's first prompt in the call's prompts
    n: int


class _Worker:
    def __init__(self, index: int):
        self.index = index
        self.process = None
        self.conn = None
        self.pending: collections.deque[Ticket] = collections.deque()
        self.restarts = 0
        self.endpoint: str | None = None  # its OpenAI-compatible endpoint's base URL (rollout.openai_endpoint)
        self.node: str | None = None    # Ray placement: the node the worker runs on
        self.context_limit: int | None = None  # its engine's (vLLM's max_model_len), as it reported
        self.cuda_uuid: str | None = None  # the GPU its engine serves on, as it reported (None: none)
        self.channel = None             # weight_transport broadcast: its weight channel (broadcast.Channel)
        self.dead: str | None = None    # Ray placement: how the actor died


class RolloutService(CopySync, BroadcastSync):
    """``workers`` rollout worker processes serving one policy (see the module docstring).

    >>> service = RolloutService("hf", "runs/tiny", tokenizer, policy=model, workers=2)   # doctest: +SKIP
    >>> pending = service.submit_generate(["2+2="], SamplingConfig(n=4, seed=0))       # doctest: +SKIP
    >>> service.sync_weights(model, version=1)   # queued behind the generation          # doctest: +SKIP
    >>> service.collect(pending).metadata["weight_version"]                            # doctest: +SKIP
    0
    """

    shared = False  # the workers hold their own copies of the weights

    def __init__(self, engine: str, model_path: str, tokenizer, *, policy: torch.nn.Module, workers: int = 1,
                 threads: int | None = None, timeout_s: float = 600.0, start_timeout_s: float = 600.0,
                 max_restarts: int = 3, options: dict | None = None, retain_freed_memory: bool = False,
                 endpoint_port: int | None = None, weight_transport: str = "copy", weight_buffers: int = 1,
                 trainer_device: torch.device | str | None = None):
        self.tokenizer = tokenizer
        self.engine_name = engine
        self.model_path = str(model_path)
        self.options = dict(options or {})
        if engine == "vllm":
            self.options["multiprocess"] = False  # the worker is the engine's own process already
        self.threads = threads
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.max_restarts = max_restarts
        self.retain_freed_memory = retain_freed_memory
        self.endpoint_port = endpoint_port
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.version = 0  # the weights in the shared copy (broadcast: the last weights sent)
        self.broadcast = weight_transport == BROADCAST
        self.manifest: list | None = None
        self._model = policy  # broadcast: what a restarted worker is sent (the live weights)
        self._live_version = 0  # broadcast: the version the live weights are about to become
        # broadcast: where the trainer's weights will live while training (the policy may still be
        # on the CPU here, before the accelerator moves it): NCCL or gloo is chosen from it
        self._device = torch.device(trainer_device) if trainer_device is not None else None
        self._init_copies(policy, weight_buffers)
        self._next_id = 0
        self._loads: collections.deque[LoadGroup] = collections.deque()  # syncs whose loads are not collected
        self._counters = collections.Counter()
        self.workers = [_Worker(i) for i in range(workers)]
        try:
            self._start_workers()
        except BaseException:
            self.close()
            raise

    # -- processes (a subclass places them elsewhere: posttrain.rl.rollout.ray_service) --------
    def _start_workers(self) -> None:
        for worker in self.workers:
            self._launch(worker)
        for worker in self.workers:
            self._await_ready(worker)
        if self.broadcast:
            for worker in self.workers:
                self._connect(worker)

    def _spec(self, worker: _Worker) -> WorkerSpec:
        """What ``worker`` starts from: the engine, its options, and the last synced weights."""
        return WorkerSpec(index=worker.index, engine=self.engine_name, model_path=self.model_path,
                          options=self.options, weights=self.weights, buffers=self._buffers, threads=self.threads,
                          version=0 if self.broadcast else self.version,  # broadcast: the input model, then _reload
                          retain_freed_memory=self.retain_freed_memory, endpoint_port=self.endpoint_port,
                          env=self._worker_env(), local_rank=self.local_rank, workers=len(self.workers),
                          manifest=self.manifest)

    def _launch(self, worker: _Worker) -> None:
        spec = self._spec(worker)
        context = torch.multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=serve, args=(child, spec), name=f"posttrain-rollout-{worker.index}")
        process.start()
        child.close()
        worker.process, worker.conn = process, parent

    def _worker_env(self) -> dict[str, str]:
        """A vllm worker on a CUDA machine takes its training process's GPU (LOCAL_RANK), as a
        colocated multiprocess engine does (vllm_engine.device_env); not the first visible one."""
        if self.engine_name != "vllm" or not torch.cuda.is_available():
            return {}
        from posttrain.rl.rollout.vllm_engine import device_env

        return device_env(True)

    def _await_ready(self, worker: _Worker) -> None:
        deadline = time.perf_counter() + self.start_timeout_s
        while not worker.conn.poll(0.2):
            if not worker.process.is_alive():
                raise RolloutWorkerError(f"rollout worker {worker.index} exited while starting ({_exit(worker.process)})")
            if time.perf_counter() > deadline:
                raise RolloutWorkerError(f"rollout worker {worker.index} did not start its {self.engine_name} engine "
                                         f"within {self.start_timeout_s:g} s")
        _, status, info, _ = worker.conn.recv()
        if status != "ready":
            raise RolloutWorkerError(f"rollout worker {worker.index} could not start its {self.engine_name} engine "
                                     f"on {self.model_path}:\n{info}")
        worker.endpoint = info.get("endpoint")
        worker.context_limit = info.get("context_limit")
        worker.cuda_uuid = info.get("cuda_uuid")

    def _restart(self, worker: _Worker, why: str) -> None:
        """Start ``worker`` again from the last synced weights and resend its unanswered requests
        (a load is answered by the restart itself: the new process starts from that copy)."""
        worker.restarts += 1
        self._counters["rollout/worker_restarts"] += 1
        waiting = [t for t in worker.pending if t.op not in ("load", "join")]
        if worker.restarts > self.max_restarts:
            raise RolloutWorkerError(
                f"rollout worker {worker.index} {why}; it was restarted {self.max_restarts} times already "
                f"(rollout.max_restarts), so the stage stops. Unanswered: {_describe(waiting)}.")
        self._stop(worker)
        self._launch(worker)
        self._await_ready(worker)
        version = self._live_version if self.broadcast else self.version
        for ticket in list(worker.pending):
            if ticket.op in ("load", "join"):
                ticket.done, ticket.result = True, restarted_load(version)
        worker.pending = collections.deque()
        if self.broadcast:
            self._reload(worker)
        worker.pending = collections.deque(waiting)
        for ticket in waiting:
            self._counters["rollout/retried_requests"] += 1
            ticket.sent = time.perf_counter()
            self._send(worker, ticket)

    # -- requests ----------------------------------------------------------------------------
    def _submit(self, worker: _Worker, op: str, payload: tuple) -> Ticket:
        self._next_id += 1
        ticket = Ticket(self._next_id, worker.index, op, payload)
        worker.pending.append(ticket)
        try:
            self._send(worker, ticket)
        except (BrokenPipeError, OSError):
            self._restart(worker, f"could not be reached ({self._exit(worker)})")
        return ticket

    def _send(self, worker: _Worker, ticket: Ticket) -> None:
        worker.conn.send((ticket.id, ticket.op, ticket.payload))

    def _receive(self, worker: _Worker, ticket: Ticket, timeout: float) -> tuple | None:
        """The worker's next answer within ``timeout`` seconds, or None (none yet, or the worker died)."""
        try:
            return worker.conn.recv() if worker.conn.poll(timeout) else None
        except (EOFError, OSError):  # the worker's end closed: it is exiting (or broken: then end it)
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
            return None

    def _alive(self, worker: _Worker) -> bool:
        return worker.process.is_alive()

    def _exit(self, worker: _Worker) -> str:
        return _exit(worker.process)

    def wait(self, ticket: Ticket) -> Any:
        """Block until ``ticket`` is answered -> its result (the timeout names worker and request)."""
        worker = self.workers[ticket.worker]
        while not ticket.done:
            left = ticket.sent + self.timeout_s - time.perf_counter()
            message = self._receive(worker, ticket, max(0.0, min(left, 0.5)))  # an answer already there counts
            if message is not None:
                self._answer(worker, message)
            elif not self._alive(worker):
                self._restart(worker, f"died ({self._exit(worker)})")
            elif left <= 0:
                raise RolloutWorkerError(
                    f"rollout worker {worker.index} did not answer its {_describe([ticket])} within "
                    f"{self.timeout_s:g} s (rollout.timeout_s)")
        return ticket.result

    def _answer(self, worker: _Worker, message: tuple) -> None:
        request_id, status, result, timing = message
        ticket = worker.pending.popleft()
        if ticket.id != request_id:  # answers come in request order; anything else is a bug
            raise RolloutWorkerError(f"rollout worker {worker.index} answered request {request_id}, "
                                     f"expected {ticket.id}")
        ticket.done = True
        if worker.pending:  # the worker starts on the next request now: its timeout counts from here
            worker.pending[0].sent = time.perf_counter()
        self._counters["rollout/worker_idle_s"] += timing.get("idle_s", 0.0)
        self._counters["rollout/worker_busy_s"] += timing.get("busy_s", 0.0)
        if status != "ok":
            raise RolloutWorkerError(f"rollout worker {worker.index} failed its {_describe([ticket])}:\n{result}")
        ticket.result = result

    def submit_generate(self, prompts: list, sampling: SamplingConfig, from_ids: bool = False) -> PendingRollout:
        """Send the prompts' shares to the workers (contiguous prompt groups); returns at once.

        A share after the first samples with ``seed + first_prompt x n`` (the offset the vllm engine
        gives each prompt's requests), so one worker reproduces the colocated engine's batch."""
        return self._scatter("generate", prompts, sampling, (from_ids,))

    def submit_episodes(self, rows: list[dict], sampling: SamplingConfig, environment, max_tokens: int,
                        key: str = "environment") -> PendingRollout:
        """Play ``sampling.n`` multi-turn episodes per row in the workers; returns at once.

        Each worker plays its share (contiguous rows, seeds offset as in :meth:`submit_generate`)
        with its own runner of the ``environment`` block (an EnvironmentConfig, loaded there by
        reference) against its own engine, so an episode's turns all sample with one weights
        version and the trainer does nothing while they play (asynchronous training's unit of work)."""
        return self._scatter("episodes", rows, sampling, (environment, max_tokens, key))

    def _scatter(self, op: str, items: list, sampling: SamplingConfig, extra: tuple) -> PendingRollout:
        if not items:
            raise ValueError(f"{op}() needs a non-empty list of prompts")
        shares = min(len(self.workers), len(items))
        bounds = [len(items) * i // shares for i in range(shares + 1)]
        tickets, offsets = [], []
        for worker, (begin, end) in zip(self.workers, itertools.pairwise(bounds)):
            share = sampling
            if begin and sampling.seed is not None:
                share = sampling.model_copy(update={"seed": sampling.seed + begin * sampling.n})
            tickets.append(self._submit(worker, op, (list(items[begin:end]), share, *extra)))
            offsets.append(begin)
        return PendingRollout(tickets, offsets, sampling.n)

    def collect(self, pending: PendingRollout) -> RolloutBatch:
        """Wait for every share of ``pending`` -> one batch, rows in prompt order; its
        ``metadata["weight_version"]`` is the oldest version any share was sampled with."""
        parts = [self.wait(ticket) for ticket in pending.tickets]
        merged = RolloutBatch([], [], [], [], [], [], metadata={"engine": self.engine_name, "server": True})
        episodes = parts[0].episodes is not None
        if episodes:  # multi-turn: the masks, environment rewards and records travel too
            merged.completion_mask, merged.env_rewards, merged.episodes = [], [], []
            merged.metadata["environment"] = parts[0].metadata.get("environment")
        names = ("prompt_ids", "completion_ids", "sampler_logprobs", "finish_reasons", "completions",
                 *(("completion_mask", "env_rewards", "episodes") if episodes else ()))
        for part, offset in zip(parts, pending.prompt_offsets):
            for name in names:
                getattr(merged, name).extend(getattr(part, name))
            merged.prompt_index.extend(i + offset for i in part.prompt_index)
        merged.generation_seconds = max(part.generation_seconds for part in parts)
        merged.metadata["weight_version"] = min(part.metadata["weight_version"] for part in parts)
        prompts = pending.prompt_offsets[-1] + len(set(parts[-1].prompt_index))
        return check_batch(merged, prompts, pending.n)

    # -- the RolloutEngine API ---------------------------------------------------------------
    def generate(self, prompts: list, sampling: SamplingConfig) -> RolloutBatch:
        return self.collect(self.submit_generate(prompts, sampling))

    def generate_ids(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> RolloutBatch:
        return self.collect(self.submit_generate(prompt_ids, sampling, from_ids=True))

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        return self.wait(self._submit(self.workers[0], "score", (sequences,)))

    def sync_weights(self, model: torch.nn.Module, version: int | None = None,
                     probe: list[list[int]] | None = None) -> None:
        """Copy ``model``'s weights into a shared copy as ``version`` (default: the next one) and
        queue a load on every worker; returns without waiting for the loads. The loads that read
        that copy before are waited for first (the copy must not change under a worker reading
        it): with one copy the previous sync's, with k the k-th sync's before. ``probe``: sequences each
        worker scores right after loading (read with :meth:`load_results`)."""
        version = self.version + 1 if version is None else version
        probe = list(probe or [])
        if self.broadcast:
            self._broadcast_weights(model, version, probe)
        else:
            self._copy_weights(model, version, probe)

    def settled_loads(self, keep: int = 0) -> list[tuple[int, list[dict]]]:
        """Wait for the loads of every sync not yet collected but the newest ``keep`` -> (version,
        each worker's answer: version, load_s, probe log-probs) per sync, oldest first."""
        settled = []
        while len(self._loads) > keep:
            group = self._loads.popleft()
            settled.append((group.version, [self.wait(ticket) for ticket in group.tickets]))
        return settled

    def load_results(self) -> list[dict]:
        """Wait for every queued load -> each worker's answers, oldest sync first."""
        return [result for _, results in self.settled_loads() for result in results]

    @property
    def context_limit(self) -> int | None:
        """The smallest context a worker's engine holds (None where none reported one): an episode
        played through the service ends "length" before it outgrows it, as on a colocated engine."""
        limits = [w.context_limit for w in self.workers if w.context_limit]
        return min(limits) if limits else None

    @property
    def endpoints(self) -> list[str | None]:
        """Each worker's OpenAI-compatible base URL (``http://127.0.0.1:PORT/v1``; None without one)."""
        return [worker.endpoint for worker in self.workers]

    def records(self) -> list[dict]:
        """The chat-completion requests the workers' endpoints served since the last call (each
        with ``worker``, its index), answered in order after the requests queued before."""
        tickets = [self._submit(worker, "records", ()) for worker in self.workers]
        return [{**record, "worker": ticket.worker} for ticket in tickets for record in self.wait(ticket)]

    def stats(self) -> dict[str, float]:
        """Counters since the last call: worker idle/busy seconds (summed over workers), restarts,
        retried requests."""
        out = {"rollout/worker_restarts": 0.0, "rollout/retried_requests": 0.0, **self._counters}
        self._counters.clear()
        return {key: float(value) for key, value in out.items()}

    def sleep(self) -> None:
        """Nothing to free in the trainer's process."""

    def wake(self) -> None:
        """See :meth:`sleep`."""

    def close(self) -> None:
        """Ask every worker to stop; kill the ones that do not within 30 s."""
        for worker in self.workers:
            self._close_channel(worker)
            if worker.process is None:
                continue
            try:
                worker.conn.send((0, "close", ()))
            except (BrokenPipeError, OSError):
                pass
        for worker in self.workers:
            self._stop(worker, grace_s=30.0)

    def _stop(self, worker: _Worker, grace_s: float = 0.0) -> None:
        process = worker.process
        if process is None:
            return
        process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join(10)
        worker.conn.close()
        worker.process = worker.conn = None


def _exit(process) -> str:
    code = process.exitcode if process is not None else None
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _describe(tickets: list[Ticket]) -> str:
    if not tickets:
        return "nothing"
    parts = []
    for ticket in tickets:
        if ticket.op in ("generate", "episodes"):
            parts.append(f"{ticket.op} request ({len(ticket.payload[0])} prompts x {ticket.payload[1].n})")
        else:
            parts.append(f"{ticket.op} request")
    return ", ".join(parts)
