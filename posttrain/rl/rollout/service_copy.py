"""The trainer's side of ``rollout.weight_transport: copy`` (a mixin of RolloutService).

The service holds the policy's float32 weights in shared-memory tensors under HF names
(:func:`~posttrain.rl.rollout.weights.iter_full_state_dict`); a sync copies the trainer's weights
into one and queues a ``load`` to every worker, which reads it. A copy is rewritten only after
every load that read it was answered, so no worker reads a copy being written. With ``k`` copies
(the trainer keeps ``max_staleness`` of them) the syncs take turns, and a sync waits for the load
of the k-th sync before it, not for the newer ones still queued behind generation.
"""
from __future__ import annotations

import os

import torch

from posttrain.rl.rollout.types import RolloutWorkerError
from posttrain.rl.rollout.weights import check_shared_memory, iter_full_state_dict

__all__ = ["CopySync"]


class CopySync:
    """Shared-copy syncs for :class:`~posttrain.rl.rollout.service.RolloutService` (its workers,
    ``_submit``/``wait`` and ``_loads``). With ``broadcast`` on there are no copies:
    ``_initial_weights`` leaves it to BroadcastSync."""

    def _init_copies(self, policy: torch.nn.Module, copies: int) -> None:
        """``copies`` shared copies, the first holding ``policy``'s weights (broadcast: none)."""
        self._copies = copies
        self.weights = self._initial_weights(policy)  # the newest copy
        self._buffers = [self.weights] + [self._spare_copy() for _ in range(copies - 1)]
        self._next_buffer = 1 % copies

    @property
    def weight_buffers(self) -> int:
        """How many weight copies the syncs use in turn (a sync waits for the load that read the
        copy it overwrites: with k, the load of the k-th sync before)."""
        return len(self._buffers)

    def _spare_copy(self) -> dict[str, torch.Tensor]:
        """Another shared copy for the syncs to alternate with (nothing to copy with broadcast)."""
        return {name: torch.empty_like(tensor).share_memory_() for name, tensor in self.weights.items()}

    def _initial_weights(self, policy: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The policy's float32 copy in shared memory, read by every worker process at each load
        (broadcast: no copy, only the manifest of what each load sends)."""
        if self.broadcast:
            return self._broadcast_manifest(policy)
        weights = {name: tensor.detach().to("cpu", dtype=torch.float32, copy=True)
                   for name, tensor in iter_full_state_dict(policy)}
        check_shared_memory(sum(t.numel() * t.element_size() for t in weights.values()), self._copies,
                            processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # a service per process
        return {name: tensor.share_memory_() for name, tensor in weights.items()}

    def _copy_weights(self, model: torch.nn.Module, version: int, probe: list[list[int]]) -> None:
        """Write ``model`` into the next copy as ``version`` and queue its load on every worker."""
        from posttrain.rl.rollout.service import LoadGroup

        buffer = self._next_buffer
        self._free(buffer)
        payload = self._publish(model, buffer)
        self.version, self.weights = version, self._buffers[buffer]
        self._next_buffer = (buffer + 1) % len(self._buffers)
        self._loads.append(LoadGroup(version, buffer, [self._submit(worker, "load", (version, probe, *payload))
                                                       for worker in self.workers]))

    def _free(self, buffer: int) -> None:
        """Wait for the queued loads that read copy ``buffer`` (their answers stay for load_results)."""
        for group in self._loads:
            if group.buffer == buffer:
                for ticket in group.tickets:
                    self.wait(ticket)

    def _publish(self, model: torch.nn.Module, buffer: int) -> tuple:
        """Copy ``model``'s weights into copy ``buffer`` -> the load's extra payload (its index)."""
        weights = self._buffers[buffer]
        with torch.no_grad():
            for name, tensor in iter_full_state_dict(model):
                if name not in weights:
                    raise RolloutWorkerError(f"sync_weights: the policy has weight {name!r}, which the rollout "
                                             "workers' copy lacks (different architecture?)")
                weights[name].copy_(tensor)
        return (buffer,)
