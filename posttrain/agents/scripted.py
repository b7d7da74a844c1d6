"""A rollout engine that plays scripted assistant turns: turn k of every episode is ``turns[k]``
(the last one repeats), tokenized canonically and ended with the eos token. ``posttrain
env-check --turn`` uses it to drive an environment without a model."""
from __future__ import annotations

from posttrain.rl.rollout.types import RolloutBatch, SamplingConfig, check_batch


class ScriptedTurns:
    """``generate_ids`` answers each row with the turn that matches how many turns it has had."""

    shared = True

    def __init__(self, tokenizer, turns: list[str]):
        if not turns:
            raise ValueError("ScriptedTurns needs at least one turn")
        self.tokenizer, self.turns = tokenizer, list(turns)
        probe = [{"role": "user", "content": "x"}]
        plain = tokenizer.apply_chat_template(probe, tokenize=False)
        # the assistant header the template appends; its count in a prompt = the turn being asked for
        self._header = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)[len(plain):]
        if not self._header.strip():
            raise ValueError("the chat template appends no assistant header; scripted turns cannot be counted")
        self.calls = 0

    def _turn_index(self, ids: list[int]) -> int:
        return max(0, self.tokenizer.decode(ids).count(self._header) - 1)

    def generate_ids(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> RolloutBatch:
        self.calls += 1
        texts = [self.turns[min(self._turn_index(ids), len(self.turns) - 1)] for ids in prompt_ids]
        return scripted_batch(self.tokenizer, prompt_ids, texts, sampling.max_tokens)

    def close(self) -> None:
        """Nothing to release."""


def scripted_batch(tokenizer, prompt_ids: list[list[int]], texts: list[str], max_tokens: int,
                   logprob: float = 0.0) -> RolloutBatch:
    """A one-completion-per-row RolloutBatch answering row i with ``texts[i]``: its canonical
    tokens and the eos id, cut to ``max_tokens`` ("length" where cut), each token at ``logprob``."""
    eos = [tokenizer.eos_token_id]
    out, reasons = [], []
    for text in texts:
        tokens = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + eos
        reasons.append("length" if len(tokens) > max_tokens else "stop")
        out.append(tokens[:max_tokens])
    batch = RolloutBatch(prompt_ids=[list(p) for p in prompt_ids], completion_ids=out,
                         sampler_logprobs=[[logprob] * len(ids) for ids in out], finish_reasons=reasons,
                         completions=[tokenizer.decode(ids, skip_special_tokens=True) for ids in out],
                         prompt_index=list(range(len(out))))
    return check_batch(batch, len(out), 1)
