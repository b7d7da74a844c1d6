"""Process reward models: encode step-split answers, and load a trained PRM to score each step.

A `prm` stage writes an HF token-classification model (2 labels: step wrong / right) plus
``prm.json`` (``{"step_separator": ", ", "supervision": "step"}``). An answer is read as the policy writes it: the prompt
rendered as the rollout engines render it (chat template with the generation prompt, no special
tokens added; a string as it is), then the answer text ``separator.join(steps)`` tokenized on its
own; each step is scored at the token that holds its last character
(posttrain.rl.algos.process). The score of a step is the PRM's probability of "right".

>>> prm = load_process_reward_model("runs/prm/prm/model")                      # doctest: +SKIP
>>> prm.step_scores(["What is 2 plus 2?"], [["ones 2+2=4", "so 4"]])           # doctest: +SKIP
([[0.97, 0.95]], [0.88])
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from posttrain.errors import ConfigError
from posttrain.rl.algos.process import step_char_ends, step_token_ends

PRM_FILE = "prm.json"
Text = str | list[dict[str, Any]]


def prompt_ids(tokenizer, prompt: Text) -> list[int]:
    """The prompt's ids as the rollout engines render it (posttrain.rl.rollout.types.render_prompts)."""
    if isinstance(prompt, str):
        text = prompt
    else:
        text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_steps(tokenizer, prompt: Text, steps: Sequence[str], separator: str) -> tuple[list[int], list[int]]:
    """(prompt + answer ids, the position of each step's last token in them)."""
    head = prompt_ids(tokenizer, prompt)
    answer = tokenizer(separator.join(steps), add_special_tokens=False, return_offsets_mapping=True)
    ends = step_token_ends(answer["offset_mapping"], step_char_ends(steps, separator))
    return head + list(answer["input_ids"]), [len(head) + e for e in ends]


@dataclass
class ProcessRewardModel:
    """A trained PRM (token classification, 2 labels) with its tokenizer and step separator."""

    model: Any
    tokenizer: Any
    separator: str
    batch_size: int = 64

    def split(self, completion: str) -> list[str]:
        """The steps of a sampled answer: its text split at the separator (empty pieces dropped)."""
        steps = [s for s in completion.split(self.separator) if s.strip()]
        return steps or [completion or " "]

    @torch.no_grad()
    def step_scores(self, prompts: Sequence[Text], step_lists: Sequence[Sequence[str]]
                    ) -> tuple[list[list[float]], list[float]]:
        """P(right) at each step's end, per answer, and at the prompt's last token (the score
        before any step: PAV's V of the empty prefix)."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        scores: list[list[float]] = []
        initial: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            encoded, starts = [], []
            for prompt, steps in zip(prompts[start:start + self.batch_size], step_lists[start:start + self.batch_size]):
                encoded.append(encode_steps(self.tokenizer, prompt, steps, self.separator))
                starts.append(len(prompt_ids(self.tokenizer, prompt)) - 1)
            width = max(len(ids) for ids, _ in encoded)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded], device=device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded], device=device)
            right = self.model(input_ids=input_ids, attention_mask=mask).logits.float().softmax(-1)[..., 1].cpu()
            for row, ((_, ends), first) in enumerate(zip(encoded, starts)):
                scores.append([float(right[row, e]) for e in ends])
                initial.append(float(right[row, first]))
        return scores, initial


def load_process_reward_model(path: str | Path, device: torch.device | str = "cpu") -> ProcessRewardModel:
    """The PRM a `prm` stage wrote to ``path`` (ConfigError if it is not one)."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    folder = Path(path)
    meta = folder / PRM_FILE
    if not meta.exists():
        raise ConfigError(f"process_reward_model {str(folder)!r}: no {PRM_FILE} there; expected the model folder a "
                          "`prm` stage wrote (its output, e.g. ${stages.prm.output})")
    separator = json.loads(meta.read_text())["step_separator"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForTokenClassification.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    return ProcessRewardModel(model=model, tokenizer=tokenizer, separator=separator)
