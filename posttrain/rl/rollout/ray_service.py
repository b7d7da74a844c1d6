"""Ray placement of the rollout workers (``rollout: {mode: server, placement: ray}``).

The same service as :class:`~posttrain.rl.rollout.service.RolloutService` (requests, staleness,
restarts, timeouts), with the workers as Ray actors placed by a Ray placement group: one bundle of
``worker_resources`` per worker (strategy ``ray_strategy``), plus, when ``trainer_resources`` is
set, a first bundle that reserves the trainer's share on the trainer's own node, so that Ray places
no worker on it. Ray is the scheduler; posttrain only asks for bundles. The workers may sit on any
node of the cluster (``ray start --head`` / ``ray start --address``; ``ray_address: auto``): the
weights travel through Ray's object store (one ``ray.put`` per sync, read by every actor), not
through shared memory.

A Ray actor runs the methods one caller submits in submission order, so a load queued behind a
generation takes effect after it, as in a worker process. An actor that dies (its node lost, the
process killed) is replaced by a new actor in the same bundle, started from the last synced
weights, and its unanswered requests are sent again (``rollout.max_restarts``).
"""
from __future__ import annotations

import os

import torch

from posttrain.errors import ConfigError
from posttrain.rl.rollout.service import RolloutService, RolloutWorkerError, Ticket, _Worker
from posttrain.rl.rollout.service_worker import RolloutWorker, WorkerSpec, worker_process
from posttrain.rl.rollout.weights import iter_full_state_dict


def connect(address: str | None, key: str = "rollout.ray_address") -> None:
    """Join the Ray cluster at ``address`` ("auto": the one `ray start` left on this machine;
    None: start a local one), or ConfigError naming the recipe ``key``."""
    import ray

    if address not in (None, "auto", "local") and not address.startswith("ray://"):
        reachable(address, key)  # ray.init retries an unreachable GCS for minutes
    if ray.is_initialized():  # this process joined a cluster already (a notebook, a test): use it
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray writes a token under the home folder
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"{key} {address!r}: could not connect to a Ray cluster ({exc}). Start "
                          "one with `ray start --head` (and `ray start --address HEAD:6379` on the other nodes), "
                          "or leave ray_address unset for a local Ray") from None


def reachable(address: str, key: str = "rollout.ray_address", timeout_s: float = 5.0) -> None:
    """ConfigError naming ``key`` unless a TCP connection to HOST:PORT opens in time."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key} {address!r}: no Ray head answers there ({exc}). Start one with "
                          "`ray start --head --port PORT`, give HOST:PORT of a running head, or leave ray_address "
                          "unset for a local Ray") from None


class _RolloutActor:
    """The Ray actor: a RolloutWorker in the actor's process."""

    def __init__(self, spec: WorkerSpec, weights: dict[str, torch.Tensor]):
        spec.weights = weights
        self._process = worker_process(spec)
        self._process.__enter__()  # for the actor's life
        self.worker = RolloutWorker(spec)

    def ready(self) -> dict:
        import ray

        return {**self.worker.ready_info(), "node": ray.get_runtime_context().get_node_id()}

    def handle(self, request_id: int, op: str, payload: tuple, weights: dict | None = None) -> tuple:
        if weights is not None:  # a load: Ray resolved the object-store reference to the tensors
            payload = (*payload, weights)
        return (request_id, *self.worker.handle(op, payload))


class RayRolloutService(RolloutService):
    """Rollout workers as Ray actors in a placement group (see the module docstring)."""

    def __init__(self, engine: str, model_path: str, tokenizer, *, policy: torch.nn.Module,
                 ray_address: str | None = None, worker_resources: dict[str, float] | None = None,
                 trainer_resources: dict[str, float] | None = None, ray_strategy: str = "PACK", **kwargs):
        import ray

        self._owns_ray = not ray.is_initialized()  # a Ray this stage started (or joined) is left at close
        connect(ray_address)
        self.worker_resources = dict(worker_resources or {"CPU": 1})
        self.trainer_resources = dict(trainer_resources or {})
        self.ray_strategy = ray_strategy
        self.nodes: list[str] = []
        self._group = None
        super().__init__(engine, model_path, tokenizer, policy=policy, **kwargs)

    # -- the transport hooks ----------------------------------------------------------------
    def _initial_weights(self, policy: torch.nn.Module) -> dict:
        import ray

        self._weights_ref = None
        if self.broadcast:  # nothing in the object store: each actor gets its own weight channel
            return super()._initial_weights(policy)
        self._weights_ref = ray.put({name: tensor.detach().to("cpu", dtype=torch.float32, copy=True)
                                     for name, tensor in iter_full_state_dict(policy)})
        return {}

    def _channel_host(self) -> str:
        """This node's address: the actors may sit on other nodes."""
        import ray

        return ray.util.get_node_ip_address()

    def _worker_env(self) -> dict[str, str]:
        """Nothing: Ray sets CUDA_VISIBLE_DEVICES for the GPUs of an actor's bundle."""
        return {}

    def _start_workers(self) -> None:
        self._group, self._first_bundle = self._place(len(self.workers))
        super()._start_workers()
        self.nodes = [w.node for w in self.workers]

    def _place(self, workers: int):
        import ray
        from ray.util.placement_group import placement_group, placement_group_table

        bundles = ([self.trainer_resources] if self.trainer_resources else []) + [self.worker_resources] * workers
        group = placement_group(bundles, strategy=self.ray_strategy, name=f"posttrain-rollout-{os.getpid()}")
        try:
            ray.get(group.ready(), timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(group)
            raise ConfigError(
                f"Ray could not place {workers} rollout worker(s) of {self.worker_resources} "
                f"(rollout.worker_resources){' and the trainer ' + str(self.trainer_resources) if self.trainer_resources else ''}"
                f" with strategy {self.ray_strategy} within {self.start_timeout_s:g} s; the cluster has "
                f"{ray.cluster_resources()}") from None
        if self.trainer_resources:
            here = ray.get_runtime_context().get_node_id()
            there = placement_group_table(group)["bundles_to_node_id"][0]
            if there != here:
                ray.util.remove_placement_group(group)
                raise ConfigError(f"rollout.trainer_resources {self.trainer_resources}: Ray reserved them on node {there}, "
                                  f"but the trainer runs on node {here}; name a resource only the trainer's node has "
                                  "(`ray start --resources '{\"trainer\": 1}'` there)")
        return group, 1 if self.trainer_resources else 0

    def _launch(self, worker: _Worker) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        spec = self._spec(worker)  # its weights come from the object store (the second argument below)
        strategy = PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=self._first_bundle + worker.index)
        resources = dict(self.worker_resources)
        actor = ray.remote(_RolloutActor).options(
            num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0), resources=resources,
            scheduling_strategy=strategy, max_restarts=0, name=None)
        worker.process = actor.remote(spec, self._weights_ref)
        worker.conn = None
        worker.dead = None

    def _await_ready(self, worker: _Worker) -> None:
        import ray

        try:
            info = ray.get(worker.process.ready.remote(), timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RolloutWorkerError(f"rollout worker {worker.index} (Ray actor) did not start its {self.engine_name} "
                                     f"engine within {self.start_timeout_s:g} s") from None
        except ray.exceptions.RayActorError as exc:
            raise RolloutWorkerError(f"rollout worker {worker.index} (Ray actor) could not start its {self.engine_name} "
                                     f"engine on {self.model_path}:\n{exc}") from None
        worker.node, worker.endpoint, worker.context_limit = info["node"], info["endpoint"], info["context_limit"]
        worker.cuda_uuid = info["cuda_uuid"]

    def _send(self, worker: _Worker, ticket: Ticket) -> None:
        if ticket.op == "load":
            version, probe, weights = ticket.payload
            ticket.ref = worker.process.handle.remote(ticket.id, "load", (version, probe), weights)
        else:
            ticket.ref = worker.process.handle.remote(ticket.id, ticket.op, ticket.payload)

    def _receive(self, worker: _Worker, ticket: Ticket, timeout: float) -> tuple | None:
        import ray

        first = worker.pending[0]  # answers are taken in request order, as from a worker process
        ready, _ = ray.wait([first.ref], timeout=timeout)
        if not ready:
            return None
        try:
            return ray.get(first.ref)
        except ray.exceptions.RayActorError as exc:
            worker.dead = f"the Ray actor died: {str(exc).splitlines()[0]}"
            return None

    def _alive(self, worker: _Worker) -> bool:
        return worker.dead is None

    def _exit(self, worker: _Worker) -> str:
        return worker.dead or "still running"

    def _free(self, buffer: int) -> None:
        """Nothing to wait for: every sync puts a new object, none is overwritten (an object lives
        as long as a load that reads it is not collected)."""

    def _publish(self, model: torch.nn.Module, buffer: int) -> tuple:
        import ray

        self._weights_ref = ray.put({name: tensor.detach().to("cpu", dtype=torch.float32, copy=True)
                                     for name, tensor in iter_full_state_dict(model)})
        return (self._weights_ref,)

    def _stop(self, worker: _Worker, grace_s: float = 0.0) -> None:
        import ray

        if worker.process is not None:
            ray.kill(worker.process, no_restart=True)
        worker.process = None

    def close(self) -> None:
        import ray

        for worker in self.workers:
            self._close_channel(worker)
            self._stop(worker)
        if self._group is not None:
            ray.util.remove_placement_group(self._group)
            self._group = None
        if self._owns_ray:
            ray.shutdown()
