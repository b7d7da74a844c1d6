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


# CausalLM families whose logits are exactly lm_head(final hidden state) (no soft-capping or
# scaling after the head; checked in transformers' modeling files): their log-probs are computed
# in chunks from the hidden states. Any other model computes its full logits (same values, more memory).
HIDDEN_LOGIT_FAMILIES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3",
                                   "olmo2", "smollm3", "gemma", "deepseek_v3", "glm4"})
DEFAULT_CHUNK_BYTES = 256 * 2**20


class ActorCritic(nn.Module):
    """``forward(layout fields...) -> (logprobs (N,), entropy (N,) | None, values (N,) | None)``
    at the N generated tokens of a :class:`~posttrain.rl.loop.packing.ForwardLayout`.

    The policy's final hidden states are read at the positions that predict the generated
    tokens and its lm_head runs on those alone, in chunks of at most ``chunk_bytes`` of float32
    logits (:mod:`posttrain.rl.loop.logits`); padding and prompt positions never get logits.
    ``values`` are the critic's scalar output at the same positions (V(s_t) for token t).
    Everything happens inside this module's forward, so DDP and DeepSpeed see one forward.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.chunk_bytes = chunk_bytes
        self.from_hidden = getattr(policy.config, "model_type", None) in HIDDEN_LOGIT_FAMILIES

    @property
    def config(self):
        """The policy's config (DeepSpeed sizes its "auto" buckets from ``config.hidden_size``)."""
        return self.policy.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                logit_index: torch.Tensor, target_ids: torch.Tensor, temperature: float = 1.0,
                with_entropy: bool = False, entropy_grad: bool = False):
        from posttrain.rl.loop.logits import chunk_tokens, selected_logprobs

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                  "use_cache": False}
        if self.from_hidden:
            hidden = self.policy.get_decoder()(**inputs).last_hidden_state
            head = self.policy.get_output_embeddings()
        else:  # the model's own logits, gathered: exact for any head, (R, W, V) in memory
            hidden = self.policy(**inputs).logits
            head = nn.Identity()
        hidden = hidden.reshape(-1, hidden.shape[-1])[logit_index]  # (N, H) or (N, V)
        chunk = chunk_tokens(self.chunk_bytes, self.policy.config.vocab_size)
        logprobs, entropy = selected_logprobs(hidden, head, target_ids, temperature, chunk,
                                              with_entropy=with_entropy, entropy_grad=entropy_grad)
        values = None
        if self.critic is not None:
            values = self.critic(**inputs).logits.squeeze(-1).float().reshape(-1)[logit_index]
        return logprobs, entropy, values


def _load(cls: Any, path: str, what: str, **kwargs: Any) -> nn.Module:
    try:
        return cls.from_pretrained(path, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path!r}: cannot load it as {cls.__name__} ({exc}).") from exc


def load_policy(path: str) -> nn.Module:
    """The policy to train (float32 master weights; accelerate casts for bf16 autocast)."""
    from transformers import AutoModelForCausalLM

    return disable_dropout(_load(AutoModelForCausalLM, path, "model"))


def load_reference(path: str, device: torch.device | str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ActorCritic:
    """The frozen reference policy, wrapped so it is called like the trained one.

    It is not prepared by accelerate: every process keeps a full copy (fine for the models this
    runs on; a ZeRO-3-sharded reference is future work).
    """
    from transformers import AutoModelForCausalLM

    model = disable_dropout(_load(AutoModelForCausalLM, path, "ref_model"))
    return ActorCritic(model.to(device).eval().requires_grad_(False), chunk_bytes=chunk_bytes)


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
