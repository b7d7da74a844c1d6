"""The trained modules: a policy, optionally a critic, wrapped as one module; the frozen reference.

Policy and critic live in ONE ``nn.Module`` (:class:`ActorCritic`) with one optimizer holding two
parameter groups (each with its own learning rate). One module is what ``accelerate.prepare``
wraps in DDP or a single DeepSpeed engine (ZeRO-2/3), so the same code runs in one process and
under the launcher, and PPO's policy and value losses share one backward pass.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from posttrain.errors import ConfigError


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0: the log-probs of the rollout and of the update must be
    computed by the same deterministic function, or the PPO ratio is noise (TRL does the same)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # HF attention reads a float in train mode
            module.attention_dropout = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "classifier_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)
    return model


class ActorCritic(nn.Module):
    """``forward(...) -> (logits (B, k, V), values (B, L) | None)``.

    ``logits_to_keep=k`` returns the logits of the last k positions only (the response part);
    values are the critic's scalar output at every position (None without a critic).
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic

    @property
    def config(self):
        """The policy's config (DeepSpeed sizes its "auto" buckets from ``config.hidden_size``)."""
        return self.policy.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                logits_to_keep: int = 0):
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False, logits_to_keep=logits_to_keep).logits
        values = None
        if self.critic is not None:
            values = self.critic(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=False).logits.squeeze(-1).float()
        return logits, values


def _load(cls: Any, path: str, what: str, **kwargs: Any) -> nn.Module:
    try:
        return cls.from_pretrained(path, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path!r}: cannot load it as {cls.__name__} ({exc}).") from exc


def load_policy(path: str) -> nn.Module:
    """The policy to train (float32 master weights; accelerate casts for bf16 autocast)."""
    from transformers import AutoModelForCausalLM

    return disable_dropout(_load(AutoModelForCausalLM, path, "model"))


def load_reference(path: str, device: torch.device | str) -> ActorCritic:
    """The frozen reference policy, wrapped so it is called like the trained one.

    It is not prepared by accelerate: every process keeps a full copy (fine for the models this
    runs on; a ZeRO-3-sharded reference is future work).
    """
    from transformers import AutoModelForCausalLM

    model = disable_dropout(_load(AutoModelForCausalLM, path, "ref_model"))
    return ActorCritic(model.to(device).eval().requires_grad_(False))


def load_critic(path: str, pad_token_id: int | None) -> nn.Module:
    """A value model: AutoModelForTokenClassification with one output per position.

    Initialised from ``path``: a reward model (backbone and scalar ``score`` head, so values
    start as the reward model's per-position scores) or the policy (a fresh head). No dropout.
    """
    from transformers import AutoConfig, AutoModelForTokenClassification

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"critic_model {path!r}: cannot read its config ({exc}).") from exc
    # set after loading: from_pretrained drops config keys the class does not declare
    config.num_labels = 1
    config.classifier_dropout = 0.0
    config.token_classification_bias = False  # a reward model's `score` head has no bias either
    model = _load(AutoModelForTokenClassification, path, "critic_model", config=config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return disable_dropout(model)


def build_optimizer(model: ActorCritic, lr: float, weight_decay: float, critic_lr: float | None) -> torch.optim.Optimizer:
    """AdamW with one parameter group per module, so the critic has its own learning rate."""
    groups = [{"params": [p for p in model.policy.parameters() if p.requires_grad], "lr": lr, "name": "policy"}]
    if model.critic is not None:
        groups.append({"params": [p for p in model.critic.parameters() if p.requires_grad],
                       "lr": critic_lr if critic_lr is not None else lr, "name": "critic"})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
