"""Score (prompt, completion) pairs with a sequence-classification reward model.

Used by the `reward_model` reward channel when ``posttrain.models.reward`` is not available.
The text is rendered as the reward model saw it in training: a chat prompt (message list) gets
the completion as an assistant turn through the tokenizer's chat template (TRL's RewardTrainer
does the same with conversational preference data); a plain string prompt is concatenated.
"""
from __future__ import annotations

from typing import Any

import torch

from posttrain.errors import ConfigError


class SequenceClassifierScorer:
    """``score(prompts, completions) -> list[float]``: the model's logit 0 per pair, frozen."""

    def __init__(self, path: str, device: Any = "cpu", batch_size: int = 32, max_length: int = 1024):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"reward_model {path!r}: cannot load a sequence-classification model ({exc}).") from exc
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length

    def render(self, prompt: str | list[dict], completion: str) -> str:
        if isinstance(prompt, str):
            return prompt + completion
        messages = list(prompt) + [{"role": "assistant", "content": completion}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    @torch.no_grad()
    def score(self, prompts: list[str | list[dict]], completions: list[str]) -> list[float]:
        texts = [self.render(p, c) for p, c in zip(prompts, completions)]
        out: list[float] = []
        self.tokenizer.padding_side = "right"
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length, add_special_tokens=False)
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits  # (b, 1)
            out.extend(logits[:, 0].float().cpu().tolist())
        return out
