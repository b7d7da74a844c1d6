"""Helpers for the agent tests: an engine that plays scripted assistant turns, tool files."""
from __future__ import annotations

from posttrain.agents.scripted import scripted_batch
from posttrain.rl.rollout.types import RolloutBatch, SamplingConfig


class ScriptedEngine:
    """A rollout engine whose k-th ``generate_ids`` call answers row i with ``turns[k][i]``
    (tokenized canonically, then the eos id), each token with log-prob -1. Records every call."""

    shared = True

    def __init__(self, tokenizer, turns: list[list[str]]):
        self.tokenizer, self.turns = tokenizer, turns
        self.calls: list[tuple[list[list[int]], list[list[int]]]] = []

    def generate_ids(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> RolloutBatch:
        texts = self.turns[len(self.calls)]
        assert len(texts) == len(prompt_ids), (len(texts), len(prompt_ids))
        batch = scripted_batch(self.tokenizer, prompt_ids, texts, sampling.max_tokens, logprob=-1.0)
        self.calls.append(([list(p) for p in prompt_ids], batch.completion_ids))
        return batch


TOOLS_FILE = '''
import time


def slow(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "slept"


def broken(x: int) -> str:
    """Always fails.

    Args:
        x: Anything.
    """
    raise RuntimeError("the database is down")


def opaque(x: int) -> object:
    """Returns something that is not text.

    Args:
        x: Anything.
    """
    return object()


def no_hints(x):
    """Lacks type hints.

    Args:
        x: Anything.
    """
    return x


def no_docstring(x: int) -> int:
    return x
'''
