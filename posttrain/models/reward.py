"""Load a trained reward model (or an ensemble of them) and score prompt/completion pairs.

A `reward_model` stage writes either one HF sequence-classification model (`num_labels=1`) or,
with `ensemble: K`, the folders `member_0 .. member_{K-1}` plus `ensemble.json`::

    {"members": ["member_0", "member_1", ...], "aggregation": "mean", "std_coef": 1.0,
     "seeds": [0, 1, ...], "bootstrap": false}

:func:`load_reward_model` reads either layout (a single model folder is an ensemble of one) and
returns a :class:`RewardScorer`. Texts are tokenized exactly as TRL's RewardTrainer tokenized the
training pairs: message lists through the chat template of ``prompt + completion``, plain strings
as ``prompt + completion + eos_token``. The score is the value head at the last non-pad token.

Aggregating the K member rewards of one sample (mean, min, mean - k * std) is RL math and lives
in :mod:`posttrain.rl.algos.ensemble`, with its papers.

>>> scorer = load_reward_model("runs/rm/reward_model/model")          # doctest: +SKIP
>>> scorer.score(["What is 2 plus 2?"], ["4"])                         # doctest: +SKIP
tensor([1.73])
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from posttrain.errors import ConfigError
from posttrain.rl.algos.ensemble import AGGREGATIONS, aggregate

ENSEMBLE_FILE = "ensemble.json"
Aggregation = Literal["mean", "min", "mean_minus_std"]

Text = str | list[dict[str, Any]]


def texts_to_ids(tokenizer, prompts: Sequence[Text], completions: Sequence[Text]) -> list[list[int]]:
    """Token ids of each prompt+completion, as TRL's RewardTrainer builds them for training."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    out = []
    for prompt, completion in zip(prompts, completions):
        if isinstance(prompt, list) != isinstance(completion, list):
            raise ValueError("a prompt and its completion must both be strings or both be message lists")
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=True, return_dict=True)["input_ids"]
        else:
            text = prompt + completion
            if not text.endswith(tokenizer.eos_token):
                text += tokenizer.eos_token  # TRL's add_eos for non-conversational pairs
            ids = tokenizer(text)["input_ids"]
        out.append(list(ids))
    return out


@dataclass
class RewardScorer:
    """K reward models sharing one tokenizer; `score` aggregates their rewards per sample.

    `members` are `AutoModelForSequenceClassification` models with `num_labels=1` in eval mode.
    """

    members: list[Any]
    tokenizer: Any
    aggregation: str = "mean"
    std_coef: float = 1.0
    batch_size: int = 64
    names: list[str] = field(default_factory=list)

    @torch.no_grad()
    def member_scores(self, prompts: Sequence[Text], completions: Sequence[Text]) -> torch.Tensor:
        """Rewards of every member, shape (K, B), float32 on the CPU."""
        ids = texts_to_ids(self.tokenizer, prompts, completions)
        pad = self.tokenizer.pad_token_id
        rows = []
        for model in self.members:
            device = next(model.parameters()).device
            chunks = []
            for start in range(0, len(ids), self.batch_size):
                batch = ids[start:start + self.batch_size]
                width = max(len(x) for x in batch)
                # Right padding: the classifier reads the last non-pad token, as in training.
                input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=device)
                mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=device)
                logits = model(input_ids=input_ids, attention_mask=mask).logits  # (b, 1)
                chunks.append(logits[:, 0].float().cpu())
            rows.append(torch.cat(chunks) if chunks else torch.zeros(0))
        return torch.stack(rows)

    def score(self, prompts: Sequence[Text], completions: Sequence[Text], aggregation: str | None = None,
              std_coef: float | None = None) -> torch.Tensor:
        """One reward per (prompt, completion), shape (B,), aggregated over the members."""
        return aggregate(self.member_scores(prompts, completions), aggregation or self.aggregation,
                         self.std_coef if std_coef is None else std_coef)

    def __len__(self) -> int:
        return len(self.members)


def ensemble_members(path: Path) -> tuple[list[Path], dict[str, Any]]:
    """Member folders of a reward model directory and its ensemble.json contents ({} for one model)."""
    spec_file = path / ENSEMBLE_FILE
    if spec_file.is_file():
        try:
            spec = json.loads(spec_file.read_text())
        except ValueError as err:
            raise ConfigError(f"{spec_file}: not valid JSON ({err}).") from None
        members = spec.get("members")
        if not isinstance(members, list) or not members:
            raise ConfigError(f"{spec_file}: key 'members' must be a non-empty list of member folders.")
        paths = [path / str(m) for m in members]
        missing = [str(p) for p in paths if not (p / "config.json").is_file()]
        if missing:
            raise ConfigError(f"{spec_file}: member folder(s) without a model: {', '.join(missing)}.")
        return paths, spec
    if (path / "config.json").is_file():
        return [path], {}
    raise ConfigError(f"{path}: not a reward model (expected config.json, or {ENSEMBLE_FILE} with member folders).")


def load_reward_model(path: str | Path, aggregation: str | None = None, std_coef: float | None = None,
                      device: str | torch.device = "cpu", batch_size: int = 64) -> RewardScorer:
    """Load a reward model folder or ensemble; aggregation/std_coef default to ensemble.json's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    paths, spec = ensemble_members(path)
    aggregation = aggregation or spec.get("aggregation", "mean")
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"reward aggregation {aggregation!r} is not supported; expected one of {', '.join(AGGREGATIONS)}.")
    tokenizer = AutoTokenizer.from_pretrained(str(paths[0]))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    members = []
    for member in paths:
        model = AutoModelForSequenceClassification.from_pretrained(str(member), num_labels=1, dtype=torch.float32)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        members.append(model.to(device).eval())
    coef = float(spec.get("std_coef", 1.0)) if std_coef is None else float(std_coef)
    return RewardScorer(members, tokenizer, aggregation, coef, batch_size, [p.name for p in paths])
