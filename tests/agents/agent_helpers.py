"""Helpers for the agent tests: an engine that plays scripted assistant turns, tool files."""
from __future__ import annotations

from posttrain.rl.rollout.types import RolloutBatch, SamplingConfig, check_batch


class ScriptedEngine:
    """A rollout engine whose k-th ``generate_ids`` call answers row i with ``turns[k][i]``
    (tokenized canonically, then the eos id), each token with log-prob -1. Records every call."""

    shared = True

    def __init__(self, tokenizer, turns: list[list[str]], eos: bool = True):
        self.tokenizer, self.turns, self.eos = tokenizer, turns, eos
        self.calls: list[tuple[list[list[int]], list[list[int]]]] = []

    def generate_ids(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> RolloutBatch:
        texts = self.turns[len(self.calls)]
        assert len(texts) == len(prompt_ids), (len(texts), len(prompt_ids))
        eos = [self.tokenizer.eos_token_id] if self.eos else []
        out = [list(self.tokenizer(t, add_special_tokens=False)["input_ids"]) + eos for t in texts]
        reasons = []
        for i, ids in enumerate(out):
            reasons.append("length" if len(ids) > sampling.max_tokens else "stop")
            out[i] = ids[:sampling.max_tokens]
        self.calls.append(([list(p) for p in prompt_ids], out))
        batch = RolloutBatch(prompt_ids=[list(p) for p in prompt_ids], completion_ids=out,
                             sampler_logprobs=[[-1.0] * len(ids) for ids in out], finish_reasons=reasons,
                             completions=[self.tokenizer.decode(ids, skip_special_tokens=True) for ids in out],
                             prompt_index=list(range(len(out))))
        return check_batch(batch, len(out), 1)


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
