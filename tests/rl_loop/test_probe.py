"""The sync probe: a synced engine matches the trainer's log-probs; a stale one stops the stage."""
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from posttrain.errors import StageFailed
from posttrain.rl.loop.dist import Processes
from posttrain.rl.loop.models import ActorCritic, load_policy
from posttrain.rl.loop.probe import check_sync, probe_sequences
from posttrain.rl.rollout import HFEngine


def _session(tiny_model_dir, engine, model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "one two three"}, {"prompt": [{"role": "user", "content": "2+2?"}]}, {"prompt": "unused"}]
    probe = probe_sequences(tokenizer, rows, 2, engine)
    return SimpleNamespace(config=SimpleNamespace(sync_probe_max_gap=0.1), procs=Processes(), model=model, engine=engine,
                           probe=probe)


def test_an_engine_with_its_own_synced_copy_matches_the_trainer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = load_policy(str(tiny_model_dir))
    engine = HFEngine(str(tiny_model_dir), tokenizer)  # its own copy, as vLLM holds one
    session = _session(tiny_model_dir, engine, ActorCritic(policy))
    assert len(session.probe) == 2 and all(len(ids) > 1 for ids in session.probe)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))  # an update
    engine.sync_weights(policy)
    stats = check_sync(session, step=1, pad_token_id=0)
    assert stats["sync/probe_gap"] < 1e-5 and stats["sync/probe_gap_max"] < 1e-4


def test_a_stale_engine_stops_the_stage_naming_the_gap_and_the_bound(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = load_policy(str(tiny_model_dir))
    engine = HFEngine(str(tiny_model_dir), tokenizer)
    session = _session(tiny_model_dir, engine, ActorCritic(policy))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn_like(p))  # trained, but never synced
    with pytest.raises(StageFailed, match=r"after the weight sync of step 3, the rollout engine's log-probs differ .* "
                                          r"by [0-9.]+ nats per token on the 2 probe prompts .*sync_probe_max_gap is 0.1"):
        check_sync(session, step=3, pad_token_id=0)


def test_nothing_to_probe_when_the_engine_generates_with_the_training_module(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = load_policy(str(tiny_model_dir))
    session = _session(tiny_model_dir, HFEngine(None, tokenizer, model=policy), ActorCritic(policy))
    assert session.probe == [] and check_sync(session, step=1, pad_token_id=0) == {}


class _PeerWithAStaleEngine(Processes):
    """Rank 0 of two whose peer measured a gap of 3 nats (all_gather without a process group)."""

    def __init__(self):
        super().__init__(rank=0, size=2)

    def gather_rows(self, local):
        return torch.cat([local, torch.tensor([3.0], dtype=local.dtype)]), slice(0, 1)


def test_every_process_stops_when_one_engine_is_stale(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = load_policy(str(tiny_model_dir))
    engine = HFEngine(str(tiny_model_dir), tokenizer)  # this process's engine is in sync
    session = _session(tiny_model_dir, engine, ActorCritic(policy))
    session.procs = _PeerWithAStaleEngine()
    with pytest.raises(StageFailed, match=r"the rollout engine of process 1's log-probs differ from the trainer's by 3 nats"):
        check_sync(session, step=2, pad_token_id=0)
