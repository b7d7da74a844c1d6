"""Weights by broadcast (rollout.weight_transport: broadcast; posttrain.rl.rollout.broadcast): a real
two-process gloo channel, and the service's workers loading the trainer's tensors through theirs:
the same samples as the colocated engine after a sync, loads ordered behind generations, and a
worker killed before or during a sync restarted with the live weights."""
import os
import signal
import time

import pytest
import torch

from posttrain.models import load_model
from posttrain.rl.rollout import SamplingConfig, make_engine
from posttrain.rl.rollout.broadcast import Channel, ChannelError, backend_for, manifest_of, paired
from posttrain.rl.rollout.service import RolloutService, RolloutWorkerError

PROMPTS = ["Item 1:", "Item 2:", "Item 3:"]
SAMPLING = SamplingConfig(n=4, max_tokens=8, seed=5)
TENSORS = [("a.weight", torch.arange(6, dtype=torch.float32).reshape(2, 3)),
           ("b.bias", torch.tensor([1.5, -2.0], dtype=torch.float64)), ("c.ids", torch.tensor([7], dtype=torch.int64))]


def _receiver(port, manifest, out):
    channel = Channel.join("127.0.0.1", port, "gloo", timeout_s=30)
    out.put([(name, tensor.clone()) for name, tensor in channel.receive(manifest)])
    channel.close()


def test_a_channel_delivers_every_tensor_exactly_in_order():
    context = torch.multiprocessing.get_context("spawn")
    out = context.Queue()
    channel = Channel.listen("127.0.0.1", timeout_s=30)
    process = context.Process(target=_receiver, args=(channel.port, manifest_of(TENSORS), out))
    process.start()
    try:
        channel.accept("gloo")
        assert channel.send(iter(TENSORS), manifest_of(TENSORS)) == 6 * 4 + 2 * 8 + 8
        received = out.get(timeout=60)
    finally:
        channel.close()
        process.join(30)
    assert [name for name, _ in received] == [name for name, _ in TENSORS]
    for (_, got), (_, sent) in zip(received, TENSORS):
        assert got.dtype == sent.dtype and torch.equal(got, sent)


def test_a_tensor_is_sent_as_the_manifest_says_or_refused_naming_it():
    """DeepSpeed may cast the parameters to bf16 after the manifest was taken: they are sent in
    the manifest's dtype. A name or shape the workers do not expect is refused before sending."""
    context = torch.multiprocessing.get_context("spawn")
    out = context.Queue()
    manifest = manifest_of(TENSORS[:1])
    channel = Channel.listen("127.0.0.1", timeout_s=30, what="rollout worker 0's weight channel")
    process = context.Process(target=_receiver, args=(channel.port, manifest, out))
    process.start()
    try:
        channel.accept("gloo")
        with pytest.raises(ChannelError, match=r"rollout worker 0's weight channel: the weights changed since the "
                                               r"channel opened: got a.weight \(3, 2\), the workers expect a.weight \(2, 3\)"):
            channel.send_one("a.weight", torch.zeros(3, 2), manifest[0])
        bf16 = TENSORS[0][1].to(torch.bfloat16)
        assert channel.send_one("a.weight", bf16, manifest[0]) == 6 * 4
        [(name, received)] = out.get(timeout=60)
    finally:
        channel.close()
        process.join(30)
    assert name == "a.weight" and received.dtype == torch.float32 and torch.equal(received, bf16.float())


def test_tensors_pair_with_the_manifest_and_fewer_are_refused():
    manifest = manifest_of(TENSORS)
    assert [(name, entry) for name, _, entry in paired(TENSORS, manifest, "x")] == list(zip(
        [n for n, _ in TENSORS], manifest))
    assert [entry for _, _, entry in paired(TENSORS, manifest[:2], "x")][-1] is None  # send_one refuses it
    with pytest.raises(ChannelError, match="sync_weights: the weights changed since the channel opened: "
                                           "the workers expect c.ids too"):
        list(paired(TENSORS[:2], manifest, "sync_weights"))


def test_a_worker_that_never_joins_times_out_naming_what_waited():
    channel = Channel.listen("127.0.0.1", timeout_s=1, what="rollout worker 3's weight channel")
    start = time.perf_counter()
    with pytest.raises(ChannelError, match=r"rollout worker 3's weight channel: the rollout worker did not join the "
                                           r"gloo group within 1 s"):
        channel.accept("gloo")
    assert time.perf_counter() - start < 20
    channel.close()


def test_a_trainer_that_is_not_listening_is_named():
    with pytest.raises(ChannelError, match=r"could not connect to the trainer at 127.0.0.1:1 within 1 s"):
        Channel.join("127.0.0.1", 1, "gloo", timeout_s=1)


def test_nccl_only_between_different_gpus():
    assert backend_for(torch.device("cpu"), None) == "gloo"
    assert backend_for(torch.device("cpu"), "GPU-1") == "gloo"  # the trainer's weights are on the CPU


@pytest.fixture
def policy(tiny_dir):
    return load_model(str(tiny_dir))


@pytest.fixture
def service(tiny_dir, tokenizer, policy):
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=2, threads=1, timeout_s=60,
                             weight_transport="broadcast")
    yield service
    service.close()


def perturbed(policy, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return policy


def colocated_batch(tiny_dir, tokenizer, policy):
    colocated = make_engine("hf", str(tiny_dir), tokenizer, model=policy)
    first = colocated.generate(PROMPTS[:1], SAMPLING)  # worker 0's share, then worker 1's (seed offset)
    second = colocated.generate(PROMPTS[1:], SAMPLING.model_copy(update={"seed": SAMPLING.seed + SAMPLING.n}))
    return first.completion_ids + second.completion_ids


def test_broadcast_sync_serves_the_trainer_weights_after_the_queued_generation(service, tiny_dir, tokenizer, policy):
    """No copy in shared memory: the workers receive the tensors over their channels. The load
    still takes effect after the generation queued before it, and then every worker serves the
    trainer's weights exactly (probe and samples)."""
    assert service.weights == {} and all(w.channel.backend == "gloo" for w in service.workers)
    before = service.generate(PROMPTS, SAMPLING)
    pending = service.submit_generate(PROMPTS, SAMPLING)
    service.sync_weights(perturbed(policy, 0), version=7, probe=[[3, 4, 5, 6]])
    queued = service.collect(pending)
    assert queued.metadata["weight_version"] == 0 and queued.completion_ids == before.completion_ids
    colocated = make_engine("hf", str(tiny_dir), tokenizer, model=policy)
    for loaded in service.load_results():
        assert loaded["version"] == 7 and loaded["probe"] == colocated.score([[3, 4, 5, 6]])
    after = service.generate(PROMPTS, SAMPLING)
    assert after.metadata["weight_version"] == 7
    assert after.completion_ids == colocated_batch(tiny_dir, tokenizer, policy) != before.completion_ids


def test_a_worker_killed_between_syncs_comes_back_with_the_live_weights(service, tiny_dir, tokenizer, policy):
    service.sync_weights(perturbed(policy, 1), version=3)
    service.load_results()
    pending = service.submit_generate(PROMPTS, SAMPLING)
    os.kill(service.workers[1].process.pid, signal.SIGKILL)
    batch = service.collect(pending)
    assert batch.metadata["weight_version"] == 3
    assert batch.completion_ids == colocated_batch(tiny_dir, tokenizer, policy)
    stats = service.stats()
    assert stats["rollout/worker_restarts"] == 1 and stats["rollout/retried_requests"] == 1


def test_a_worker_dying_before_the_sync_reaches_it_gets_the_new_weights(service, tiny_dir, tokenizer, policy):
    """Killed with a generation queued, found dead while the sync takes the answers ahead of its
    load: the restarted worker samples that generation with the weights being synced, and says so
    (its batch's version is the new one, never an older one than it really is). Its restart sent
    it the weights, so the sync itself streams them to the other worker only."""
    before = service.generate(PROMPTS, SAMPLING)
    pending = service.submit_generate(PROMPTS, SAMPLING)
    os.kill(service.workers[0].process.pid, signal.SIGKILL)
    streamed, send = [], service._send_weights
    service._send_weights = lambda model, workers: streamed.append([w.index for w in workers]) or send(model, workers)
    service.sync_weights(perturbed(policy, 2), version=4)
    assert streamed == [[0], [1]]  # the restart's, then the sync's
    batch = service.collect(pending)
    restarted, alive = (ticket.result for ticket in pending.tickets)
    assert restarted.metadata["weight_version"] == 4 and alive.metadata["weight_version"] == 0
    assert batch.metadata["weight_version"] == 0  # the batch is as old as its oldest share
    fresh = colocated_batch(tiny_dir, tokenizer, policy)
    assert restarted.completion_ids == fresh[:4] != before.completion_ids[:4]  # prompt 0 x n 4: worker 0's share
    assert alive.completion_ids == before.completion_ids[4:]
    assert [r["version"] for r in service.load_results()] == [4, 4]
    assert service.generate(PROMPTS, SAMPLING).completion_ids == fresh


def test_a_worker_that_stops_answering_during_a_sync_times_out_naming_it(tiny_dir, tokenizer, policy):
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, threads=1, timeout_s=2,
                             weight_transport="broadcast")
    pid = service.workers[0].process.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(RolloutWorkerError, match=r"the weight sync to rollout worker 0 failed: rollout worker 0's "
                                                     r"weight channel: the broadcast of model.embed_tokens.weight failed "
                                                     r"or timed out after 2 s \(.*[Tt]imed out"):
            service.sync_weights(perturbed(policy, 3), version=1)
    finally:
        os.kill(pid, signal.SIGCONT)
        service.close()


def test_a_worker_killed_during_the_broadcast_is_restarted_and_sent_the_weights(service, tiny_dir, tokenizer, policy):
    worker = service.workers[0]
    channel, pid = worker.channel, worker.process.pid
    real_send = channel.send_one

    def killed_first(name, tensor, entry):  # the worker dies as the first tensor of the sync goes out
        if worker.process is not None and worker.process.pid == pid:
            os.kill(pid, signal.SIGKILL)
            worker.process.join(10)
        return real_send(name, tensor, entry)

    channel.send_one = killed_first
    start = time.perf_counter()
    service.sync_weights(perturbed(policy, 4), version=5)
    assert time.perf_counter() - start < 30  # the broken channel is noticed, not waited out (timeout_s 60)
    assert [r["version"] for r in service.load_results()] == [5, 5]
    assert service.stats()["rollout/worker_restarts"] == 1 and worker.process.pid != pid
    assert service.generate(PROMPTS, SAMPLING).completion_ids == colocated_batch(tiny_dir, tokenizer, policy)


def test_a_worker_dying_before_it_joins_its_channel_is_restarted(tiny_dir, tokenizer, policy, monkeypatch):
    real_submit = RolloutService._submit
    killed = []

    def kill_before_the_first_join(self, worker, op, payload):
        if op == "join" and not killed:
            killed.append(worker.process.pid)
            os.kill(worker.process.pid, signal.SIGKILL)
            worker.process.join(10)
        return real_submit(self, worker, op, payload)

    monkeypatch.setattr(RolloutService, "_submit", kill_before_the_first_join)
    start = time.perf_counter()
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, threads=1, timeout_s=60,
                             weight_transport="broadcast")
    try:
        assert time.perf_counter() - start < 50  # found dead, not waited out
        assert service.stats()["rollout/worker_restarts"] == 1 and service.workers[0].process.pid != killed[0]
        colocated = make_engine("hf", str(tiny_dir), tokenizer, model=policy)
        assert service.generate(PROMPTS[:1], SAMPLING).completion_ids == colocated.generate(PROMPTS[:1], SAMPLING).completion_ids
    finally:
        service.close()
