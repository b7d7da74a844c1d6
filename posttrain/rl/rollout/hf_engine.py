"""Rollouts with transformers models: batched, left-padded, seeded (posttrain.rl.rollout.decode).

On CPU and for small models this is the faster engine (see ../shared ENVIRONMENT.md: 256 x 64
tokens of a 3M model take ~2.3 s here versus ~4 s in vLLM float32), and it needs nothing beyond
transformers. Passing the training module as ``model=`` shares it (colocated): generation then
always sees the current weights and :meth:`HFEngine.sync_weights` is a no-op.

Sampling is :func:`~posttrain.rl.rollout.decode.sample`: ``generate``'s forward and warpers with an
inverse-CDF draw (one uniform per row and step), finished rows leaving the forward and no per-step
(rows x vocabulary) scores kept.
Log-probs: ``sampler_logprobs`` are ``log_softmax`` of the *processed* scores sampled from:
logits divided by the temperature, then top-k and top-p masked. That is the distribution the token
was drawn from, and what vLLM reports with ``logprobs_mode="processed_logprobs"`` (which
:class:`~posttrain.rl.rollout.VLLMEngine` sets). For greedy decoding (temperature 0) no warper
runs, so they are the untempered log-softmax, as in vLLM. The only expected differences are float
rounding (different kernels).
"""
from __future__ import annotations

import time

import torch
from transformers import StopStringCriteria

from posttrain.errors import ConfigError
from posttrain.models import load_model
from posttrain.rl.rollout.decode import sample, warpers
from posttrain.rl.rollout.types import (
    RolloutBatch,
    SamplingConfig,
    check_batch,
    decode_completion,
    pad_right,
    render_prompts,
)
from posttrain.rl.rollout.weights import iter_full_state_dict, strip_wrappers, unwrap_model


class HFEngine:
    """transformers models behind the :class:`~posttrain.rl.rollout.RolloutEngine` API (sampling:
    :func:`~posttrain.rl.rollout.decode.sample`).

    >>> engine = HFEngine("runs/tiny", tokenizer)                              # doctest: +SKIP
    >>> batch = engine.generate(["2+2="], SamplingConfig(n=4, max_tokens=8))   # doctest: +SKIP
    """

    def __init__(self, model_path: str | None, tokenizer, *, model: torch.nn.Module | None = None,
                 batch_size: int | None = None, device: str | torch.device | None = None):
        """Load ``model_path`` (float32), or share the live module ``model`` (colocated).

        ``batch_size`` caps the rows sampled together (None = all rows at once).
        """
        if model is None and model_path is None:
            raise ConfigError("HFEngine needs model_path or model")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"HFEngine batch_size must be >= 1, got {batch_size}")
        self.tokenizer = tokenizer
        self.shared = model is not None
        self.model = _generation_module(model) if self.shared else load_model(model_path)
        if device is not None and not self.shared:
            self.model.to(device)
        self.batch_size = batch_size
        config = self.model.generation_config
        eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not self.eos_token_ids:
            raise ConfigError(f"{model_path or 'model'}: no eos_token_id in the generation config "
                              "or tokenizer; completions could never stop")
        pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]

    @torch.no_grad()
    def generate(self, prompts: list[str | list[dict]], sampling: SamplingConfig) -> RolloutBatch:
        """Sample ``sampling.n`` completions per prompt; rows grouped by prompt."""
        return self.generate_ids(render_prompts(self.tokenizer, prompts), sampling)

    @torch.no_grad()
    def generate_ids(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> RolloutBatch:
        """:meth:`generate` from token ids (a multi-turn episode's next turn: its ids so far)."""
        rows = [ids for ids in prompt_ids for _ in range(sampling.n)]
        batch = RolloutBatch([], [], [], [], [], [], metadata={"engine": "hf"})
        step = self.batch_size or len(rows)
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        # The seed must not disturb the trainer's random state (data order, dropout).
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        start = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=rng_devices):
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                for begin in range(0, len(rows), step):
                    self._generate_rows(rows[begin:begin + step], sampling, batch)
        finally:
            self.model.train(was_training)
        batch.generation_seconds = time.perf_counter() - start
        batch.prompt_index = [row // sampling.n for row in range(len(rows))]
        return check_batch(batch, len(prompt_ids), sampling.n)

    def _generate_rows(self, rows: list[list[int]], sampling: SamplingConfig,
                       batch: RolloutBatch) -> None:
        device = next(self.model.parameters()).device
        width = max(len(ids) for ids in rows)
        # Left padding: every row's last prompt token sits at column width-1, so new tokens align.
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention_mask[i, width - len(ids):] = 1
        stop = None
        if sampling.stop:
            criteria = StopStringCriteria(tokenizer=self.tokenizer, stop_strings=sampling.stop)
            stop = lambda ids: criteria(ids, None)
        out = sample(self.model, input_ids.to(device), attention_mask.to(device), max_new_tokens=sampling.max_tokens,
                     eos_token_ids=self.eos_token_ids, pad_token_id=self.pad_token_id,
                     processors=warpers(sampling.temperature, max(sampling.top_k, 0), sampling.top_p),
                     do_sample=sampling.temperature != 0, stop=stop)
        for ids, tokens, logprobs, reason in zip(rows, out.tokens, out.logprobs, out.finish_reasons):
            batch.prompt_ids.append(list(ids))
            batch.completion_ids.append(tokens)
            batch.sampler_logprobs.append(logprobs)
            batch.finish_reasons.append(reason)
            batch.completions.append(decode_completion(self.tokenizer, tokens, sampling.stop))

    @torch.no_grad()
    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-prob of every token after the first of each sequence under the engine's weights
        (temperature 1; see VLLMEngine.score)."""
        device = next(self.model.parameters()).device
        input_ids, mask = pad_right(sequences, self.pad_token_id)
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        finally:
            self.model.train(was_training)
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None].to(device))
        return [logprobs[i, :len(ids) - 1, 0].tolist() for i, ids in enumerate(sequences)]

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Serve ``model``'s weights: a no-op when the engine shares that module, else a copy.

        The copy goes name by name through
        :func:`~posttrain.rl.rollout.weights.iter_full_state_dict` (ZeRO-3 gathered, LoRA merged).
        """
        if unwrap_model(model) is unwrap_model(self.model):
            return
        self.load_weights(iter_full_state_dict(model))

    def load_weights(self, weights) -> None:
        """Copy ``(hf_name, tensor)`` pairs into the engine's own model; every weight must come
        (a rollout worker process loads the trainer's shared-memory copy through this)."""
        own = dict(unwrap_model(self.model).named_parameters())
        loaded = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in own:
                    raise ConfigError(f"sync_weights: the policy has weight {name!r}, which the "
                                      "rollout model lacks (different architecture?)")
                own[name].copy_(tensor)
                loaded.add(name)
        missing = sorted(set(own) - loaded)
        if missing:
            raise ConfigError(f"sync_weights: the policy lacks weights {missing[:5]} of the "
                              "rollout model (tied vs untied embeddings?)")

    def sleep(self) -> None:
        """Nothing to free: the sampling loop allocates its KV cache per call."""

    def wake(self) -> None:
        """See :meth:`sleep`."""

    def close(self) -> None:
        """Drop the model reference (a shared training module stays alive with its owner)."""
        self.model = None


def _generation_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module to sample with: DeepSpeed/DDP wrappers stripped, PEFT kept (a causal LM: it has
    ``generate``, though the engine samples with its own loop)."""
    model = strip_wrappers(model)
    if not hasattr(model, "generate"):
        raise ConfigError(f"HFEngine: {type(model).__name__} has no generate(); pass a causal LM")
    return model
