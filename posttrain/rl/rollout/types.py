"""The rollout contract: sampling settings in, completions grouped by prompt out.

Both engines (:mod:`~posttrain.rl.rollout.hf_engine`, :mod:`~posttrain.rl.rollout.vllm_engine`)
render prompts, expand each prompt ``n`` times and fill a :class:`RolloutBatch` through the helpers
here, so prompt ids, grouping, stop-string handling and decoded text are identical across engines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from pydantic import Field

from posttrain.common.config import StrictModel
from posttrain.errors import ConfigError, StageFailed

FINISH_REASONS = ("stop", "length")


class RolloutWorkerError(StageFailed):
    """A rollout worker failed a request, died more often than allowed, or did not answer in time."""


class SamplingConfig(StrictModel):
    """How completions are sampled; the same meaning for every rollout engine."""

    n: int = Field(8, ge=1, description="Completions per prompt (the GRPO group size).")
    temperature: float = Field(1.0, ge=0.0,
                               description="Softmax temperature; 0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass; 1 = off.")
    top_k: int = Field(-1, ge=-1,
                       description="Sample among the k most likely tokens; -1 (or 0) = off.")
    max_tokens: int = Field(64, ge=1, description="Maximum new tokens per completion.")
    stop: list[str] = Field(default_factory=list, description=(
        "Strings that end a completion; the stop string is cut from the decoded text but its "
        "tokens stay in completion_ids."))
    seed: int | None = Field(None, description=(
        "Sampling seed (the same seed and prompts give the same batch); None = the engine's "
        "running random state."))


@dataclass
class RolloutBatch:
    """Completions grouped by prompt: row i*n .. i*n+n-1 belong to prompt i (prompt_index says so).

    B = number of prompts x n. Every list has B entries; per row, ``completion_ids`` and
    ``sampler_logprobs`` have the same length (the number of generated tokens, eos included).
    For a multi-turn episode ``completion_ids`` is everything after the first prompt: the model's
    turns and the environment's messages between them, told apart by ``completion_mask`` (the
    environment's tokens have no sampler log-prob: None); ``completions`` is the final turn's text.
    """

    prompt_ids: list[list[int]]          # (B,) each row's prompt ids (chat template applied)
    completion_ids: list[list[int]]      # (B,) generated ids, no padding; eos included if generated
    sampler_logprobs: list[list[float]]  # (B,) log p_sampler(token) per generated token
    finish_reasons: list[str]            # (B,) "stop" (eos or stop string) | "length"
    completions: list[str]               # (B,) decoded text, no special tokens, stop string cut
    prompt_index: list[int]              # (B,) index into the prompts list passed to generate()
    generation_seconds: float = 0.0
    metadata: dict = field(default_factory=dict)  # engine-specific extras (timings, engine name)
    # Multi-turn episodes (posttrain.agents.episodes) only; None for single-turn completions:
    completion_mask: list[list[int]] | None = None  # (B,) per completion token: 1 sampled by the model
                                                    # (trained on), 0 an environment's token (context)
    env_rewards: list[float] | None = None          # (B,) sum of the environment's per-turn rewards
    episodes: list[dict] | None = None              # (B,) per-episode record: turns, counts, transcript

    def __len__(self) -> int:
        return len(self.completion_ids)


@runtime_checkable
class RolloutEngine(Protocol):
    """What the RL loop needs from a generator: sample, follow the policy's weights, shut down."""

    #: True when the engine generates with the training module itself (nothing to sync or probe).
    shared: bool

    def generate(self, prompts: list[str | list[dict]], sampling: SamplingConfig) -> RolloutBatch:
        """Sample ``sampling.n`` completions for every prompt (strings as-is, chats templated)."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine serve ``model``'s current weights."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory while the trainer updates (a no-op where there is none to free)."""
        ...

    def wake(self) -> None:
        """Undo :meth:`sleep` before the next sync."""
        ...

    def generate_ids(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> RolloutBatch:
        """:meth:`generate` from token ids, the prompts already rendered (multi-turn episodes)."""
        ...

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-probs (temperature 1) of each sequence's tokens after the first, under the served weights."""
        ...

    def close(self) -> None:
        """Release the engine's resources; the engine is unusable afterwards."""
        ...


def pad_right(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, longest), right-padded: token t of row i at column t.

    >>> pad_right([[5, 6, 7], [8]], 0)[0].tolist()
    [[5, 6, 7], [8, 0, 0]]
    """
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, ids in enumerate(sequences):
        input_ids[i, :len(ids)], mask[i, :len(ids)] = torch.tensor(ids), 1
    return input_ids, mask


def render_prompts(tokenizer, prompts: list[str | list[dict]]) -> list[list[int]]:
    """Token ids of each prompt: strings are tokenized as-is, message lists through the template.

    The chat template is rendered to text with ``add_generation_prompt=True`` and then tokenized
    without adding special tokens, so the ids equal what ``apply_chat_template(tokenize=True)``
    gives and what vLLM would compute from the same text.
    """
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ConfigError("generate() needs a non-empty list of prompts (strings or message lists)")
    rendered = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            text = prompt
        elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
            text = tokenizer.apply_chat_template(list(prompt), tokenize=False,
                                                 add_generation_prompt=True)
        else:
            raise ConfigError(f"prompt {index} is a {type(prompt).__name__}; expected a string "
                              "or a list of {'role': ..., 'content': ...} messages")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"prompt {index} is empty after tokenization")
        rendered.append(list(ids))
    return rendered


def longest_prompt(tokenizer, prompts: list[str | list[dict]]) -> int:
    """Tokens of the longest prompt as :func:`render_prompts` renders it (what a KV cache or a
    padded batch must hold before the completion)."""
    return max(len(ids) for ids in render_prompts(tokenizer, prompts))


def decode_completion(tokenizer, completion_ids: list[int], stop: list[str]) -> str:
    """Decoded text of a completion, special tokens skipped, cut before the first stop string.

    vLLM cuts the stop string from its text by default; the HF engine decodes the same way, so
    both engines hand identical text to the verifiers.
    """
    text = tokenizer.decode(completion_ids, skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[:min(cuts)] if cuts else text


def check_batch(batch: RolloutBatch, num_prompts: int, n: int) -> RolloutBatch:
    """Assert the invariants of the contract (row counts, grouping, per-row lengths)."""
    rows = num_prompts * n
    lists = {"prompt_ids": batch.prompt_ids, "completion_ids": batch.completion_ids,
             "sampler_logprobs": batch.sampler_logprobs, "finish_reasons": batch.finish_reasons,
             "completions": batch.completions, "prompt_index": batch.prompt_index}
    for name, values in lists.items():
        if len(values) != rows:
            raise AssertionError(f"RolloutBatch.{name} has {len(values)} rows, expected {rows}")
    if batch.prompt_index != [i // n for i in range(rows)]:
        raise AssertionError("RolloutBatch rows are not grouped prompt by prompt")
    for row, (ids, logprobs) in enumerate(zip(batch.completion_ids, batch.sampler_logprobs)):
        if len(ids) != len(logprobs):
            raise AssertionError(f"row {row}: {len(ids)} tokens but {len(logprobs)} logprobs")
    if batch.completion_mask is not None:
        for row, (ids, mask) in enumerate(zip(batch.completion_ids, batch.completion_mask, strict=True)):
            if len(ids) != len(mask) or set(mask) - {0, 1}:
                raise AssertionError(f"row {row}: completion_mask must be 0/1 per token ({len(ids)} tokens, "
                                     f"{len(mask)} mask entries)")
    bad = set(batch.finish_reasons) - set(FINISH_REASONS)
    if bad:
        raise AssertionError(f"unexpected finish reasons {sorted(bad)}")
    return batch
