"""The trainer's side of ``rollout.weight_transport: broadcast`` (a mixin of RolloutService).

Each worker has its own weight channel (posttrain.rl.rollout.broadcast) to the training process
that owns it. A sync takes the answers queued ahead of the load first (a worker answers in order,
and one blocked sending a large answer would never reach the load), queues the load on every
worker, then streams the trainer's tensors into every channel in one pass over the model (under
ZeRO-3 that pass gathers each module once). A worker found dead meanwhile is restarted on the
input model, given a new channel and sent the live weights as the version being synced, so a
request it had queued is sampled with weights at least as new as its label says.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from posttrain.rl.rollout.broadcast import BROADCAST, ChannelError, paired
from posttrain.rl.rollout.types import RolloutWorkerError
from posttrain.rl.rollout.weights import is_zero3, iter_full_state_dict

if TYPE_CHECKING:
    from posttrain.rl.rollout.service import _Worker

__all__ = ["BROADCAST", "BroadcastSync"]


class BroadcastSync:
    """Broadcast syncs for :class:`~posttrain.rl.rollout.service.RolloutService` (its workers,
    tickets, ``_submit``/``wait``/``_restart``; ``_device``, ``_model`` and ``_live_version`` are
    set by the service when ``broadcast`` is on)."""

    def _broadcast_manifest(self, policy: torch.nn.Module) -> dict:
        """No weight copy (-> {}): the manifest of what each load sends, and the trainer's device."""
        from posttrain.rl.rollout.broadcast import manifest_of

        self.manifest = manifest_of(iter_full_state_dict(policy))
        if self._device is None:
            self._device = next(policy.parameters()).device
        return {}

    def _channel_host(self) -> str:
        """Where workers reach the trainer's weight channel (Ray placement: this node's address)."""
        return "127.0.0.1"

    def _connect(self, worker: _Worker) -> None:
        """Open ``worker``'s weight channel: listen, ask the worker to join, accept (timeouts named).
        A worker that dies before it joined is restarted (its restart opens the channel)."""
        from posttrain.rl.rollout.broadcast import Channel, backend_for

        self._close_channel(worker)
        host = self._channel_host()
        channel = Channel.listen(host, self.timeout_s, what=f"rollout worker {worker.index}'s weight channel")
        backend = backend_for(self._device, worker.cuda_uuid)
        ticket = self._submit(worker, "join", (host, channel.port, backend, self.timeout_s))
        if ticket.done:  # the worker was restarted on the way, and its restart connected it
            channel.close()
            return
        try:
            channel.accept(backend, self._device, alive=lambda: self._alive(worker))
        except ChannelError:
            channel.close()
            if self._alive(worker):
                raise
            self._restart(worker, f"died while opening its weight channel ({self._exit(worker)})")
            return
        worker.channel = channel
        self.wait(ticket)

    def _broadcast_weights(self, model: torch.nn.Module, version: int, probe: list[list[int]]) -> None:
        """The broadcast sync: take the answers queued ahead of the load, queue the load, stream
        the weights into every worker's channel (a worker that dies meanwhile is restarted and sent
        the live weights by its restart; the loads' timeouts count from the end of the stream)."""
        from posttrain.rl.rollout.service import LoadGroup, Ticket, restarted_load

        self._model, self._live_version = model, version
        restarts = [worker.restarts for worker in self.workers]
        for worker in self.workers:
            for ticket in list(worker.pending):
                self.wait(ticket)
        self.version = version
        # a worker restarted meanwhile was sent these weights, as this version, by its restart: its
        # load is answered as a restarted one's, and the weights do not go to it twice
        tickets = [self._submit(worker, "load", (version, probe, BROADCAST)) if worker.restarts == before
                   else Ticket(-1, worker.index, "load", (version, probe, BROADCAST), done=True,
                               result=restarted_load(version))
                   for worker, before in zip(self.workers, restarts)]
        self._loads.append(LoadGroup(version, 0, tickets))
        receiving = [w for w, ticket in zip(self.workers, tickets) if not ticket.done]  # not restarted
        for worker, error in self._send_weights(model, receiving).items():
            self._settle_failed_send(worker, error)
        for ticket in tickets:
            ticket.sent = time.perf_counter()

    def _send_weights(self, model: torch.nn.Module, workers: list[_Worker]) -> dict:
        """Send each tensor to every worker in ``workers`` (one pass over the model, which under
        ZeRO-3 gathers) -> {worker: ChannelError} for those whose channel failed (skipped after)."""
        failed: dict[_Worker, ChannelError] = {}
        with torch.no_grad():
            for name, tensor, entry in paired(iter_full_state_dict(model), self.manifest, "sync_weights"):
                for worker in workers:
                    if worker not in failed:
                        try:
                            worker.channel.send_one(name, tensor, entry)
                        except ChannelError as exc:
                            failed[worker] = exc
        return failed

    def _close_channel(self, worker: _Worker) -> None:
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None

    def _settle_failed_send(self, worker: _Worker, error: Exception) -> None:
        """A worker whose channel broke mid-sync: restarted if it died (and sent the weights anew),
        else the stage stops naming it."""
        deadline = time.perf_counter() + 10.0  # a peer that closed its end is exiting: give it a moment
        while self._alive(worker) and time.perf_counter() < deadline:
            message = self._receive(worker, worker.pending[0], 0.5) if worker.pending else None
            if message is not None:
                self._answer(worker, message)
            elif not worker.pending:
                time.sleep(0.5)
        if self._alive(worker):
            raise RolloutWorkerError(f"the weight sync to rollout worker {worker.index} failed: {error}")
        self._restart(worker, f"died during the weight sync ({self._exit(worker)})")

    def _reload(self, worker: _Worker) -> None:
        """Broadcast: a restarted worker gets a new channel and the live weights, as the version
        they are (or are about to be) synced as; between a step's update and its sync that label
        is the previous version (older than the weights, never newer)."""
        if is_zero3(self._model):
            raise RolloutWorkerError(f"rollout worker {worker.index} was restarted, but with weight_transport broadcast "
                                     "under ZeRO-3 it can only get the weights in a gather every training process joins; "
                                     "the stage stops (use weight_transport: copy to restart workers under ZeRO-3)")
        self._connect(worker)
        ticket = self._submit(worker, "load", (self._live_version, [], BROADCAST))
        if ticket.done:  # restarted again on the way: that restart sent the weights
            return
        for error in self._send_weights(self._model, [worker]).values():
            self._settle_failed_send(worker, error)  # dead: restarted (and sent them) again; alive: stops
            return
        ticket.sent = time.perf_counter()
        self.wait(ticket)
