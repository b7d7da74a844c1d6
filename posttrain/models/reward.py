"""Load a trained reward model (or an ensemble of them) and score prompt/completion pairs.

A `reward_model` stage writes either one HF sequence-classification model (`num_labels=1`) or,
with `ensemble: K`, the folders `member_0 .. member_{K-1}` plus `ensemble.json`::

    {"members": ["member_0", "member_1", ...], "aggregation": "mean", "std_coef": 1.0,
     "seeds": [0, 1, ...], "bootstrap": false}

:func:`load_reward_model` reads either layout (a single model folder is an ensemble of one) and
returns a :class:`RewardScorer`. Texts are tokenized exactly as TRL's RewardTrainer tokenized the
training pairs: message lists through the chat template of ``prompt + completion``, plain strings
as ``prompt + completion + eos_token``. The score is the value head at the last non-pad token.

Aggregating the K member rewards r_1..r_K of one sample (pure functions, :func:`aggregate`):

* ``mean``: (1/K) sum_i r_i, the ensemble average (Coste et al. 2023, arXiv 2310.02743, "mean").
* ``min``: min_i r_i, worst-case optimisation (WCO, same paper).
* ``mean_minus_std``: mean - k * std with the population std (divide by K), a lower confidence
  bound. Where we differ: Coste et al.'s uncertainty-weighted optimisation (UWO) subtracts
  lambda * *variance*; we subtract k * std so that the penalty is in reward units and k does not
  depend on the reward scale. Reward-Robust RLHF (Yan et al. 2024, arXiv 2409.15360) likewise
  trades the nominal (mean) reward against a pessimistic one; ``min`` and ``mean_minus_std`` are
  the two pessimistic choices offered here. For K = 1 the std is 0, so every aggregation equals
  the single model's reward.

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

ENSEMBLE_FILE = "ensemble.json"
AGGREGATIONS = ("mean", "min", "mean_minus_std")
Aggregation = Literal["mean", "min", "mean_minus_std"]

Text = str | list[dict[str, Any]]


def aggregate(member_rewards: torch.Tensor, aggregation: str = "mean", std_coef: float = 1.0) -> torch.Tensor:
    """Combine per-member rewards of shape (K, B) into one reward per sample, shape (B,).

    >>> r = torch.tensor([[1.0, 0.0], [3.0, 2.0]])   # K=2 members, B=2 samples
    >>> aggregate(r, "mean").tolist(), aggregate(r, "min").tolist()
    ([2.0, 1.0], [1.0, 0.0])
    >>> aggregate(r, "mean_minus_std", std_coef=2.0).tolist()   # std = 1 for both samples
    [0.0, -1.0]
    """
    if member_rewards.dim() != 2:
        raise ValueError(f"member_rewards must be (K, B), got shape {tuple(member_rewards.shape)}")
    if aggregation == "mean":
        return member_rewards.mean(dim=0)
    if aggregation == "min":
        return member_rewards.min(dim=0).values
    if aggregation == "mean_minus_std":
        std = member_rewards.std(dim=0, unbiased=False)  # population std: 0 for an ensemble of one
        return member_rewards.mean(dim=0) - std_coef * std
    raise ConfigError(f"reward aggregation {aggregation!r} is not supported; expected one of {', '.join(AGGREGATIONS)}.")


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
