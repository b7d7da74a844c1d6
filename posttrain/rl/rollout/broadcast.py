"""Weights from a trainer process to one rollout worker by broadcast (``rollout.weight_transport: broadcast``).

A :class:`Channel` is a two-rank process group between the trainer (rank 0) and one worker (rank
1), built without touching torch.distributed's global state (a ``TCPStore`` the trainer listens
on, and a gloo or NCCL backend object on it), so it lives beside the training processes' own group
and a restarted worker gets a new channel without disturbing the others. vLLM's RLHF examples and
TRL's vLLM server set up their weight channels the same way (a stateless group beside the
trainer's); here each worker has its own, so one that dies is replaced alone.

* ``nccl``: both ends on CUDA, on different GPUs (NCCL refuses two ranks on one GPU): tensors go
  GPU to GPU, never through host memory. :func:`backend_for` decides.
* ``gloo``: everything else, tensors on the CPU (the path the CPU tests exercise end to end).

The trainer sends the tensors of :func:`~posttrain.rl.rollout.weights.iter_full_state_dict` one by
one; the worker receives them in the same order into buffers shaped by the manifest it was given
when the channel opened, and hands each to its engine as it arrives, so neither end holds a second
full copy of the model. Every step has the channel's timeout, and a timeout or a peer that went
away raises :class:`ChannelError` saying what it waited for. On NCCL, a failure the collective
itself notices is also seen by torch's NCCL watchdog, which by default ends the process
(``TORCH_NCCL_ASYNC_ERROR_HANDLING``): the stage then stops with the process, not with our message.
"""
from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable, Iterator

import torch

from posttrain.errors import StageFailed

# (name, shape, dtype name): what the worker allocates for each tensor, in the trainer's order.
Manifest = list[tuple[str, tuple[int, ...], str]]
_JOINED = "posttrain-worker-joined"  # the key a worker sets in the trainer's store once connected
BROADCAST = "broadcast"  # a load request's weight source: the worker's channel


class ChannelError(StageFailed):
    """A weight channel could not open, or a transfer on it failed or timed out."""


def backend_for(trainer_device: torch.device, worker_cuda_uuid: str | None) -> str:
    """``nccl`` when the trainer's weights are on a CUDA device and the worker serves on another
    GPU (its UUID differs), else ``gloo``: NCCL cannot pair two ranks on one GPU, and on a CPU
    machine there is nothing else."""
    if trainer_device.type != "cuda" or not worker_cuda_uuid:
        return "gloo"
    return "gloo" if cuda_uuid(trainer_device) == worker_cuda_uuid else "nccl"


def cuda_uuid(device: torch.device | None = None) -> str | None:
    """The UUID of ``device`` (default: the current CUDA device), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    return str(torch.cuda.get_device_properties(index).uuid)


def manifest_of(tensors: Iterable[tuple[str, torch.Tensor]]) -> Manifest:
    """The manifest of ``tensors`` (names, shapes and dtypes in order)."""
    return [(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")) for name, tensor in tensors]


class Channel:
    """One end of a trainer-worker weight channel (see the module docstring).

    >>> channel = Channel.listen("127.0.0.1", timeout_s=60)           # trainer   # doctest: +SKIP
    >>> # send (host, channel.port, backend) to the worker, which calls Channel.join(...)
    >>> channel.accept("gloo"); channel.send(iter_full_state_dict(model), manifest)  # doctest: +SKIP
    """

    def __init__(self, store, rank: int, timeout_s: float, what: str):
        self.store = store
        self.rank = rank
        self.timeout_s = timeout_s
        self.what = what               # named in errors: "rollout worker 0's weight channel"
        self.backend: str | None = None
        self.group = None
        self.device = torch.device("cpu")

    @property
    def port(self) -> int:
        return self.store.port

    @classmethod
    def listen(cls, host: str, timeout_s: float, what: str = "the weight channel") -> Channel:
        """The trainer's end: listen on a free port of ``host`` (the worker connects to it)."""
        store = torch.distributed.TCPStore(host, 0, world_size=2, is_master=True, wait_for_workers=False,
                                           timeout=_delta(timeout_s))
        return cls(store, 0, timeout_s, what)

    @classmethod
    def join(cls, host: str, port: int, backend: str, timeout_s: float, what: str = "the weight channel") -> Channel:
        """The worker's end: connect to the trainer's ``host:port`` and open the group."""
        try:
            store = torch.distributed.TCPStore(host, port, world_size=2, is_master=False, timeout=_delta(timeout_s))
        except (RuntimeError, torch.distributed.DistStoreError) as exc:
            raise ChannelError(f"{what}: could not connect to the trainer at {host}:{port} within "
                               f"{timeout_s:g} s ({_first_line(exc)})") from None
        store.set(_JOINED, "1")
        channel = cls(store, 1, timeout_s, what)
        channel._open(backend)
        return channel

    def accept(self, backend: str, device: torch.device | None = None,
               alive: Callable[[], bool] = lambda: True) -> None:
        """The trainer's end: wait (within the timeout, and while ``alive()`` says the worker
        still runs) for the worker to connect, then open the group; ``device``: the CUDA device
        the trainer's weights are on (nccl)."""
        deadline = time.perf_counter() + self.timeout_s
        while not self.store.check([_JOINED]):
            if not alive():
                raise ChannelError(f"{self.what}: the rollout worker exited before it joined")
            if time.perf_counter() > deadline:
                raise ChannelError(f"{self.what}: the rollout worker did not join the {backend} group within "
                                   f"{self.timeout_s:g} s")
            time.sleep(0.05)
        self._open(backend, device)

    def _open(self, backend: str, device: torch.device | None = None) -> None:
        from torch.distributed import PrefixStore

        store = PrefixStore("posttrain-weights", self.store)
        try:
            if backend == "nccl":
                from torch.distributed.distributed_c10d import ProcessGroupNCCL

                options = ProcessGroupNCCL.Options()
                options._timeout = _delta(self.timeout_s)
                self.group = ProcessGroupNCCL(store, self.rank, 2, options)
                self.device = device if device is not None and device.index is not None else torch.device(
                    "cuda", torch.cuda.current_device())
                torch.cuda.set_device(self.device)  # NCCL binds the group to the current device
            else:
                self.group = torch.distributed.ProcessGroupGloo(store, self.rank, 2, _delta(self.timeout_s))
        except (RuntimeError, torch.distributed.DistError) as exc:
            peer = "the rollout worker" if self.rank == 0 else "the trainer"
            raise ChannelError(f"{self.what}: {peer} did not join the {backend} group within {self.timeout_s:g} s "
                               f"({_first_line(exc)})") from None
        self.backend = backend
        # NCCL connects lazily, at the first collective: connect now, so a peer that never comes is
        # found here, within the timeout, not in the middle of a sync
        self._broadcast(torch.zeros(1, device=self.device), "the channel's first message")

    def send(self, tensors: Iterable[tuple[str, torch.Tensor]], manifest: Manifest) -> int:
        """Broadcast each tensor to the worker in order (:meth:`send_one`) -> bytes sent; the
        worker must be receiving the same manifest (:meth:`receive`)."""
        return sum(self.send_one(*item) for item in paired(tensors, manifest, self.what))

    def send_one(self, name: str, tensor: torch.Tensor, entry: tuple | None) -> int:
        """Broadcast one tensor as its manifest ``entry``'s dtype -> bytes sent. A name or shape
        that differs from the entry raises before anything is sent; a dtype that differs (the
        parameters may be cast after the manifest was taken, e.g. DeepSpeed's bf16) is converted."""
        if entry is None or name != entry[0] or tuple(tensor.shape) != tuple(entry[1]):
            expected = f"{entry[0]} {tuple(entry[1])}" if entry is not None else "nothing more"
            raise ChannelError(f"{self.what}: the weights changed since the channel opened: got {name} "
                               f"{tuple(tensor.shape)}, the workers expect {expected}")
        tensor = tensor.detach().to(self.device, dtype=getattr(torch, entry[2])).contiguous()
        self._broadcast(tensor, name)
        return tensor.numel() * tensor.element_size()

    def receive(self, manifest: Manifest) -> Iterator[tuple[str, torch.Tensor]]:
        """The worker's end of :meth:`send`: yield ``(name, tensor)`` as each arrives. Consume it to
        the end (:func:`drain` after an error) or the trainer's send times out."""
        for name, shape, dtype in manifest:
            buffer = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._broadcast(buffer, name)
            yield name, buffer

    def _broadcast(self, tensor: torch.Tensor, name: str) -> None:
        options = torch.distributed.BroadcastOptions()
        options.rootRank = 0
        options.timeout = _delta(self.timeout_s)
        try:
            # with a timeout, NCCL's wait blocks the CPU and raises too (without one it only orders streams)
            self.group.broadcast([tensor], options).wait(_delta(self.timeout_s))
        except (RuntimeError, torch.distributed.DistError) as exc:
            raise ChannelError(f"{self.what}: the broadcast of {name} failed or timed out after "
                               f"{self.timeout_s:g} s ({_first_line(exc)})") from None

    def close(self) -> None:
        """Tear the group down (NCCL: abort, which does not wait on a collective a dead peer left)."""
        group, self.group = self.group, None
        teardown = getattr(group, "abort" if self.backend == "nccl" else "shutdown", None)
        if teardown is not None:
            try:
                teardown()
            except RuntimeError:  # a peer that is gone already: nothing left to tear down
                pass
        self.store = None


def paired(tensors: Iterable[tuple[str, torch.Tensor]], manifest: Manifest,
           what: str) -> Iterator[tuple[str, torch.Tensor, tuple | None]]:
    """Each ``(name, tensor)`` with its manifest entry, in order (None past the manifest's end,
    which :meth:`Channel.send_one` refuses); ChannelError naming ``what`` when the tensors end
    before the manifest does."""
    entries = iter(manifest)
    for name, tensor in tensors:
        yield name, tensor, next(entries, None)
    left = next(entries, None)
    if left is not None:
        raise ChannelError(f"{what}: the weights changed since the channel opened: the workers expect {left[0]} too")


def drain(tensors: Iterator) -> None:
    """Receive what is left of an interrupted :meth:`Channel.receive` (so the sender finishes)."""
    for _ in tensors:
        pass


def _delta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
