"""Server mode's rollout workers (posttrain.rl.rollout.service): real worker processes with the hf
engine on a tiny model. Same batches as the colocated engine, weights through shared memory, loads
ordered behind generations, and faults: a killed worker restarted, a hung one timed out."""
import os
import signal
import threading

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
        # worker 0 samples prompt 0 with the seed, worker 1 prompts 1-2 with seed + 1 x n: the colocated
        # engine's batches of those shares, in prompt order
        colocated = make_engine("hf", str(tiny_dir), tokenizer, model=policy)
        first = colocated.generate(PROMPTS[:1], SAMPLING)
        second = colocated.generate(PROMPTS[1:], SAMPLING.model_copy(update={"seed": SAMPLING.seed + SAMPLING.n}))
        assert batch.completion_ids == first.completion_ids + second.completion_ids
        assert batch.prompt_ids == first.prompt_ids + second.prompt_ids
        assert service.stats()["rollout/worker_busy_s"] > 0
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


def _post(url, body):
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_openai_endpoint_serves_the_policy_and_records_tokens(tiny_dir, tokenizer, policy):
    """An OpenAI-style chat request is answered with the policy's sample (token ids and log-probs
    equal to the colocated engine's for the same seed) and recorded for the trainer."""
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, threads=1, timeout_s=60,
                             endpoint_port=0)
    try:
        [url] = service.endpoints
        messages = [{"role": "user", "content": "What is 12 plus 7?"}]
        status, reply = _post(url, {"model": "policy", "messages": messages, "max_tokens": 8, "seed": 3,
                                    "n": 2, "metadata": {"episode": "e1"}})
        assert status == 200 and reply["object"] == "chat.completion" and len(reply["choices"]) == 2
        expected = make_engine("hf", str(tiny_dir), tokenizer, model=policy).generate(
            [messages], SamplingConfig(n=2, max_tokens=8, seed=3))
        assert [c["token_ids"] for c in reply["choices"]] == expected.completion_ids
        assert [c["message"]["content"] for c in reply["choices"]] == expected.completions
        assert [[t["logprob"] for t in c["logprobs"]["content"]] for c in reply["choices"]] == expected.sampler_logprobs
        assert reply["prompt_token_ids"] == expected.prompt_ids[0] and reply["weight_version"] == 0
        [record] = service.records()
        assert record["metadata"] == {"episode": "e1"} and record["completion_ids"] == expected.completion_ids
        assert record["worker"] == 0 and service.records() == []  # drained
        status, reply = _post(url, {"messages": [{"role": "user"}]})
        assert status == 400 and reply["error"]["param"] == "messages"
        status, reply = _post(url, {"messages": messages, "temperature": -1})
        assert status == 400 and reply["error"]["param"] == "temperature"
        status, reply = _post(url, [1, 2])
        assert status == 400 and "JSON object" in reply["error"]["message"]
    finally:
        service.close()


def test_endpoint_port_in_use_names_the_key(tiny_dir, tokenizer, policy):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RolloutWorkerError, match=f"rollout.endpoint_port {port}: worker 0 of local training process 0 cannot listen on "
                                                     f"127.0.0.1:{port}"):
            RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, endpoint_port=port)


def test_sync_of_another_architecture_names_the_weight(service, policy):
    """A weight update that cannot land stops with the weight's name, before any worker reads it."""
    other = torch.nn.Module()
    other.extra = torch.nn.Linear(2, 2)
    with pytest.raises(RolloutWorkerError, match="the policy has weight 'extra.weight', which the rollout workers' copy lacks"):
        service.sync_weights(other)
    assert service.generate(PROMPTS, SAMPLING).metadata["weight_version"] == 0


NAGGING = '''
from posttrain.agents import Environment, StepResult


class Nagging(Environment):
    """Asks for more after every turn, pays 0.25 per turn; fails when told to."""

    def reset(self, row):
        self.row = row
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, text):
        if self.row.get("fail"):
            raise KeyError("state lost")
        return StepResult(messages=[{"role": "user", "content": "More."}], reward=0.25, info={"nags": 1})
'''
ROWS = [{"prompt": "Item 1:"}, {"prompt": "Item 2:"}, {"prompt": "Item 3:"}]
TURNS = SAMPLING.model_copy(update={"stop": list("abcdefghijklmnopqrstuvwxyz ")})  # a random model's turns end early


@pytest.fixture
def nagging(tmp_path):
    from posttrain.agents.config import EnvironmentConfig

    (tmp_path / "nag.py").write_text(NAGGING)
    return EnvironmentConfig(name=f"{tmp_path / 'nag.py'}:Nagging", max_turns=3, max_episode_tokens=48)


def test_workers_play_the_episodes_the_colocated_runner_plays(tiny_dir, tokenizer, policy, nagging):
    """Episodes as the unit of work: each worker plays its share (the environment loaded there from
    its file), and the batch equals the trainer's own runner against the colocated engine, share by
    share: ids, masks, sampler log-probs, rewards and records; every turn with one weights version."""
    from posttrain.agents.session import build_episode_runner

    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=2, threads=1, timeout_s=60)
    runner = build_episode_runner(nagging, tokenizer, max_tokens=8)
    try:
        service.sync_weights(perturbed(policy), version=4)
        batch = service.collect(service.submit_episodes(ROWS, TURNS, nagging, max_tokens=8))
        colocated = make_engine("hf", str(tiny_dir), tokenizer, model=policy)
        first = runner.run(colocated, ROWS[:1], TURNS)
        second = runner.run(colocated, ROWS[1:], TURNS.model_copy(update={"seed": TURNS.seed + TURNS.n}))
    finally:
        runner.close()
        service.close()
    assert batch.metadata["weight_version"] == 4 and batch.prompt_index == [i // 4 for i in range(12)]
    for name in ("prompt_ids", "completion_ids", "completion_mask", "sampler_logprobs", "env_rewards", "episodes"):
        assert getattr(batch, name) == getattr(first, name) + getattr(second, name), name
    assert max(r["turns"] for r in batch.episodes) == 3 and 0 in batch.completion_mask[0]


def test_an_environment_failing_in_a_worker_stops_naming_it(service, nagging):
    rows = [{"prompt": "Item 1:", "fail": True}, {"prompt": "Item 2:", "fail": True}]
    with pytest.raises(RolloutWorkerError, match=r"rollout worker 0 failed its episodes request \(2 prompts x 4\)"
                                                 r"(.|\n)*step\(\) calls failed(.|\n)*KeyError: 'state lost'"):
        service.collect(service.submit_episodes(rows, TURNS, nagging, max_tokens=8, key="stages.rl.environment"))


def test_the_service_context_is_its_smallest_workers():
    """Episodes played through the service (k = 0) end "length" before the smallest context a
    worker reported (vLLM's max_model_len); None when no worker's engine has one (hf)."""
    from posttrain.rl.rollout.service import _Worker

    service = RolloutService.__new__(RolloutService)
    service.workers = [_Worker(0), _Worker(1)]
    assert service.context_limit is None
    service.workers[0].context_limit, service.workers[1].context_limit = 512, 256
    assert service.context_limit == 256


def _snapshot(policy):
    from posttrain.rl.rollout.weights import iter_full_state_dict

    return {name: tensor.clone() for name, tensor in iter_full_state_dict(policy)}


def _returns_while_stopped(call, seconds: float = 3.0) -> tuple[bool, threading.Thread]:
    """Run ``call`` in a thread -> (whether it returned within ``seconds``, the thread)."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), thread


@pytest.mark.parametrize("copies", [2, 3])
def test_k_weight_copies_let_syncs_pass_the_loads_still_queued(tiny_dir, tokenizer, policy, copies):
    """max_staleness k uses k shared copies in turn: with the worker stopped (nothing it has queued
    is answered), the k - 1 syncs after the first still go through, because each writes a copy no
    queued load reads; the next would overwrite the copy the first load has yet to read, so it
    waits until the worker goes on. The generation queued between the first two loads samples the
    first sync's weights exactly."""
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, threads=1,
                             weight_buffers=copies)
    assert service.weight_buffers == copies
    pid = service.workers[0].process.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        first = service.submit_generate(PROMPTS, SAMPLING)
        service.sync_weights(perturbed(policy), version=1)
        v1 = _snapshot(policy)
        between = service.submit_generate(PROMPTS, SAMPLING)
        for version in range(2, copies + 1):
            passed, _ = _returns_while_stopped(lambda v=version: service.sync_weights(perturbed(policy), version=v))
            assert passed, version  # a copy no queued load reads
        last = _snapshot(policy)
        passed, blocked = _returns_while_stopped(lambda: service.sync_weights(perturbed(policy), version=copies + 1))
        assert not passed  # the copy load 1, behind `first`, has not read yet
        os.kill(pid, signal.SIGCONT)
        blocked.join(60)
        assert not blocked.is_alive()
        assert service.collect(first).metadata["weight_version"] == 0
        batch = service.collect(between)
        assert batch.metadata["weight_version"] == 1
        colocated = make_engine("hf", str(tiny_dir), tokenizer, model=load_model(str(tiny_dir)))
        colocated.load_weights(iter(v1.items()))
        assert batch.completion_ids == colocated.generate(PROMPTS, SAMPLING).completion_ids
        # the newest copies - 1 loads are left in flight
        assert [version for version, _ in service.settled_loads(keep=copies - 1)] == [1, 2]
        colocated.load_weights(iter(last.items()))
        assert colocated.generate(PROMPTS, SAMPLING).completion_ids != batch.completion_ids
    finally:
        os.kill(pid, signal.SIGCONT)
        service.close()


def test_one_weight_copy_makes_a_sync_wait_for_the_previous_load(tiny_dir, tokenizer, policy):
    service = RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, threads=1)
    pid = service.workers[0].process.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        pending = service.submit_generate(PROMPTS, SAMPLING)
        service.sync_weights(perturbed(policy), version=1)
        passed, second = _returns_while_stopped(lambda: service.sync_weights(perturbed(policy), version=2))
        assert not passed
        os.kill(pid, signal.SIGCONT)
        second.join(60)
        assert service.collect(pending).metadata["weight_version"] == 0
        assert [version for version, _ in service.settled_loads()] == [1, 2]
    finally:
        os.kill(pid, signal.SIGCONT)
        service.close()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="torch shares CPU tensors through /dev/shm on Linux only")
def test_weight_copies_that_shared_memory_cannot_hold_stop_before_any_worker_starts(tiny_dir, tokenizer, policy,
                                                                                   monkeypatch):
    """k float32 copies need k times the weights in /dev/shm (a container's default is 64 MB): one
    more than fits stops the service before anything is put in shared memory or a worker starts,
    naming the keys that lower it. The node's training processes each keep their own copies."""
    from collections import namedtuple

    from posttrain.errors import ConfigError
    from posttrain.rl.rollout import service_copy as service_module
    from posttrain.rl.rollout import weights as weights_module

    nbytes = 4 * sum(p.numel() for p in policy.parameters())  # a tied embedding once
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(weights_module.shutil, "disk_usage", lambda path: usage(4 * nbytes, 0, 2 * nbytes + 1))
    checked, shared, launched = [], [], []
    real_check = service_module.check_shared_memory
    monkeypatch.setattr(service_module, "check_shared_memory",
                        lambda size, copies, **kw: checked.append(size) or real_check(size, copies, **kw))
    monkeypatch.setattr(torch.Tensor, "share_memory_", lambda self: shared.append(1) or self)
    monkeypatch.setattr(RolloutService, "_launch", lambda self, worker: launched.append(worker))
    with pytest.raises(ConfigError, match=r"3 float32 copies .* /dev/shm has .* free.*rollout.max_staleness.*"
                                          r"weight_transport: broadcast.*--shm-size"):
        RolloutService("hf", str(tiny_dir), tokenizer, policy=policy, workers=1, threads=1, weight_buffers=3,
                       start_timeout_s=5)
    assert checked == [nbytes] and shared == [] and launched == []
    weights_module.check_shared_memory(nbytes, copies=2)  # two fit
    with pytest.raises(ConfigError, match=r"1 float32 copy .*--shm-size") as one:
        weights_module.check_shared_memory(3 * nbytes, copies=1)
    assert "max_staleness" not in str(one.value)  # one copy is the least
    with pytest.raises(ConfigError, match=r"the node's 3 training processes each keep 1 float32 copy .*GiB in all"):
        weights_module.check_shared_memory(2 * nbytes, copies=1, processes=3)  # each fits the free space alone
