"""Server mode's rollout workers (posttrain.rl.rollout.service): real worker processes with the hf
engine on a tiny model. Same batches as the colocated engine, weights through shared memory, loads
ordered behind generations, and faults: a killed worker restarted, a hung one timed out."""
import os
import signal

import pytest
import torch

from posttrain.models import load_model
from posttrain.rl.rollout import SamplingConfig, make_engine
from posttrain.rl.rollout.service import RolloutService, RolloutWorkerError

PROMPTS = ["Item 1:", "Item 2:", "Item 3:"]
SAMPLING = SamplingConfig(n=4, max_tokens=8, seed=5)


@pytest.fixture
def policy(tiny_dir):
    return load_model(str(tiny_dir))


@pytest.fixture
def service(tiny_dir, tokenizer, policy):
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, threads=1, timeout_s=60)
    yield service
    service.close()


def perturbed(policy):
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return policy


def test_one_worker_samples_the_colocated_batch(service, tiny_dir, tokenizer, policy):
    """Same seed, same weights: the worker's batch equals the colocated hf engine's, bit for bit."""
    colocated = make_engine("hf", str(tiny_dir), tokenizer, model=policy)
    ours, theirs = service.generate(PROMPTS, SAMPLING), colocated.generate(PROMPTS, SAMPLING)
    assert ours.completion_ids == theirs.completion_ids
    assert ours.sampler_logprobs == theirs.sampler_logprobs
    assert ours.prompt_index == theirs.prompt_index and ours.metadata["weight_version"] == 0


def test_sync_reaches_the_worker_after_the_queued_generation(service, tiny_dir, tokenizer, policy):
    """A load queued behind a generation takes effect after it (the staleness accounting relies on
    it); afterwards the worker serves the new weights exactly (probe and samples)."""
    before = service.generate(PROMPTS, SAMPLING)
    pending = service.submit_generate(PROMPTS, SAMPLING)
    service.sync_weights(perturbed(policy), version=7, probe=[[3, 4, 5, 6]])
    queued = service.collect(pending)
    assert queued.metadata["weight_version"] == 0 and queued.completion_ids == before.completion_ids
    [loaded] = service.load_results()
    colocated = make_engine("hf", str(tiny_dir), tokenizer, model=policy)
    assert loaded["version"] == 7 and loaded["probe"] == colocated.score([[3, 4, 5, 6]])
    after = service.generate(PROMPTS, SAMPLING)
    assert after.metadata["weight_version"] == 7
    assert after.completion_ids == colocated.generate(PROMPTS, SAMPLING).completion_ids != before.completion_ids


def test_two_workers_split_the_prompts_by_group(tiny_dir, tokenizer, policy):
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=2, threads=1, timeout_s=60)
    try:
        batch = service.generate(PROMPTS, SAMPLING)
        assert batch.prompt_index == [i // 4 for i in range(12)]
        assert [ids[-3:] for ids in batch.prompt_ids[::4]] == [ids[-3:] for ids in
                                                             service.generate(PROMPTS, SAMPLING).prompt_ids[::4]]
        busy = service.stats()["rollout/worker_busy_s"]
        assert busy > 0
    finally:
        service.close()
    assert all(worker.process is None for worker in service.workers)


def test_killed_worker_is_restarted_and_its_request_sent_again(service, policy):
    """SIGKILL while a generation is queued: the worker comes back with the last synced weights,
    the request is answered, and the restart is counted."""
    service.sync_weights(perturbed(policy), version=3)
    expected = service.generate(PROMPTS, SAMPLING)
    pending = service.submit_generate(PROMPTS, SAMPLING)
    os.kill(service.workers[0].process.pid, signal.SIGKILL)
    batch = service.collect(pending)
    assert batch.completion_ids == expected.completion_ids and batch.metadata["weight_version"] == 3
    stats = service.stats()
    assert stats["rollout/worker_restarts"] == 1 and stats["rollout/retried_requests"] == 1


def test_worker_dying_too_often_stops_naming_it(tiny_dir, tokenizer, policy):
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, max_restarts=0)
    try:
        pending = service.submit_generate(PROMPTS, SAMPLING)
        os.kill(service.workers[0].process.pid, signal.SIGKILL)
        with pytest.raises(RolloutWorkerError, match=r"rollout worker 0 died \(killed by SIGKILL\).*rollout.max_restarts"
                                                     r".*generate request \(3 prompts x 4\)"):
            service.collect(pending)
    finally:
        service.close()


def test_hung_worker_times_out_naming_the_request(tiny_dir, tokenizer, policy):
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, timeout_s=2)
    pid = service.workers[0].process.pid
    try:
        os.kill(pid, signal.SIGSTOP)  # alive but never answers
        pending = service.submit_generate(PROMPTS, SAMPLING)
        with pytest.raises(RolloutWorkerError, match=r"rollout worker 0 did not answer its generate request .* "
                                                     r"within 2 s \(rollout.timeout_s\)"):
            service.collect(pending)
    finally:
        os.kill(pid, signal.SIGCONT)
        service.close()


def test_worker_that_cannot_start_names_the_model(tmp_path, tokenizer, policy):
    with pytest.raises(RolloutWorkerError, match=f"rollout worker 0 could not start its hf engine on {tmp_path}"):
        RolloutService("hf", str(tmp_path), tokenizer, policy=policy, workers=1)
