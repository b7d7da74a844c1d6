"""Name -> function registries for the RL math, so that algorithm variants are data.

A recipe names its advantage estimator and policy loss by string; the stage looks the name up
here. Users add their own with the decorators::

    >>> import torch
    >>> from posttrain.rl.algos import register_advantage_estimator, ADVANTAGE_ESTIMATORS
    >>> @register_advantage_estimator("best_of_group")
    ... def best_of_group(rewards, group_size):
    ...     grouped = rewards.view(-1, group_size)
    ...     best = (grouped == grouped.max(dim=1, keepdim=True).values).to(rewards.dtype)
    ...     return best.view(-1), {}
    >>> ADVANTAGE_ESTIMATORS["best_of_group"](torch.tensor([1.0, 3.0, 2.0, 0.0]), group_size=2)[0]
    tensor([0., 1., 1., 0.])
    >>> del ADVANTAGE_ESTIMATORS["best_of_group"]

Contracts (documented here because the registries hold plain callables):

- advantage estimator: ``fn(rewards, **structure) -> (advantages, extra)``; ``advantages`` has
  the shape of ``rewards`` ((B,) sequence-level or (B, T) token-level); ``extra`` is the
  estimator's second output (``returns`` for GAE, a dict of detached stats for the others).
- policy loss: ``fn(logprobs, old_logprobs, advantages, **knobs) -> (per_token_loss, stats)``
  with ``per_token_loss`` (B, T), unaggregated; see :mod:`posttrain.rl.algos.aggregation`.

Each entry also declares, where it is defined, what the loop needs to know to use it (the
knob table): the recipe keys it reads (``knobs``: keyword argument -> config key) and its
properties, attached to the function as ``fn.spec``. The loop asks these, never branches on a
name, so a user's registered function is usable from a recipe like a built-in::

    @register_policy_loss("my_pg", knobs={"clip": "clip_ratio_low"})
    def my_pg(logprobs, old_logprobs, advantages, response_mask=None, clip=0.2): ...

Lookups of unknown names raise ``ValueError`` listing the known names; the recipe layer turns
that into a ``ConfigError`` naming the file and key (this package imports only torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Any]] = {}
POLICY_LOSSES: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True)
class EstimatorSpec:
    """What the loop needs to know about an advantage estimator.

    - ``level="sequence"``: ``fn(rewards (B,), group_size=G, **knobs) -> (advantages (B,), stats)``
      over the rewards of all processes (KL subtracted first when kl_placement is reward).
    - ``level="token"``: ``fn(token_rewards (B, T), response_mask=..., **knobs) -> (advantages,
      extra)`` on KL-penalised token rewards (so it reads the old log-probs); with
      ``needs_critic`` it also gets ``values=`` and ``extra`` is the returns (B, T), else stats.
    - ``group_baseline``: token level: subtract the group mean from the scores before the KL
      penalty when group_size > 1 (REINFORCE++-baseline).
    - ``level="step"``: multi-turn episodes (an RL stage with ``environment:``): ``fn(rewards (B,),
      group_size=G, step_rewards=(B, K), step_mask=(B, K), step_groups=(B, K), token_steps=(B, T),
      **knobs) -> (advantages (B, T), stats)``, K = turns (GiGPO).
    - ``needs_filter``: the advantages do not depend on the rewards (raft: 1 for every
      completion); only ``reward_filter`` makes the update learn from them, so it must be set.
    """

    level: Literal["sequence", "token", "step"] = "sequence"
    knobs: Mapping[str, str] = field(default_factory=dict)  # keyword argument -> config key
    needs_critic: bool = False
    min_group_size: int = 1
    group_baseline: bool = False
    needs_filter: bool = False


@dataclass(frozen=True)
class PolicyLossSpec:
    """What the loop needs to know about a policy loss: the config keys it reads (keyword
    argument -> config key), the level of its importance ratio, and the registered loss that is
    its form at another ratio level (ppo_clip at ``ratio_level: sequence`` is gspo), and the
    per-token inputs beyond the log-probs and advantages it takes from the experience batch
    (keyword argument -> ExperienceBatch field, e.g. the sampler's log-probs for decoupled_ppo)."""

    knobs: Mapping[str, str] = field(default_factory=dict)
    ratio_level: Literal["token", "sequence"] = "token"
    forms: Mapping[str, str] = field(default_factory=dict)  # other ratio level -> loss name
    inputs: Mapping[str, str] = field(default_factory=dict)  # keyword -> ExperienceBatch field


def _register(table: dict[str, Callable[..., Any]], kind: str, name: str, spec: Any) -> Callable[[F], F]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")

    def decorator(fn: F) -> F:
        if name in table and table[name] is not fn:
            raise ValueError(
                f"{kind} {name!r} is already registered (by {table[name].__module__}."
                f"{table[name].__qualname__}); pick another name"
            )
        fn.spec = spec  # type: ignore[attr-defined]
        table[name] = fn
        return fn

    return decorator


def register_advantage_estimator(name: str, *, level: Literal["sequence", "token", "step"] = "sequence",
                                 knobs: Mapping[str, str] | None = None, needs_critic: bool = False,
                                 min_group_size: int = 1, group_baseline: bool = False,
                                 needs_filter: bool = False) -> Callable[[F], F]:
    """Decorator: register ``fn`` in :data:`ADVANTAGE_ESTIMATORS` under ``name`` with its
    :class:`EstimatorSpec`.

    Registering a different function under a taken name raises ``ValueError`` (silently
    replacing a built-in would change every recipe that names it).
    """
    spec = EstimatorSpec(level=level, knobs=dict(knobs or {}), needs_critic=needs_critic,
                         min_group_size=min_group_size, group_baseline=group_baseline, needs_filter=needs_filter)
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name, spec)


def register_policy_loss(name: str, *, knobs: Mapping[str, str] | None = None,
                         ratio_level: Literal["token", "sequence"] = "token",
                         forms: Mapping[str, str] | None = None,
                         inputs: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Decorator: register ``fn`` in :data:`POLICY_LOSSES` under ``name`` with its :class:`PolicyLossSpec`."""
    spec = PolicyLossSpec(knobs=dict(knobs or {}), ratio_level=ratio_level, forms=dict(forms or {}),
                          inputs=dict(inputs or {}))
    return _register(POLICY_LOSSES, "policy loss", name, spec)


def _lookup(table: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[..., Any]:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} {name!r}; expected one of: {known}") from None


def get_advantage_estimator(name: str) -> Callable[..., Any]:
    """Return the advantage estimator registered as ``name`` (``ValueError`` if unknown)."""
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable[..., Any]:
    """Return the policy loss registered as ``name`` (``ValueError`` if unknown)."""
    return _lookup(POLICY_LOSSES, "policy loss", name)


def advantage_estimator_spec(name: str) -> EstimatorSpec:
    """The :class:`EstimatorSpec` of the estimator registered as ``name`` (``ValueError`` if unknown)."""
    return get_advantage_estimator(name).spec


def policy_loss_spec(name: str) -> PolicyLossSpec:
    """The :class:`PolicyLossSpec` of the loss registered as ``name`` (``ValueError`` if unknown)."""
    return get_policy_loss(name).spec


def resolve_policy_loss(name: str, ratio_level: str) -> str:
    """The registered loss that ``policy_loss: name`` means at ``ratio_level`` (ValueError if none)."""
    spec = policy_loss_spec(name)
    if spec.ratio_level == ratio_level:
        return name
    if ratio_level in spec.forms:
        return spec.forms[ratio_level]
    raise ValueError(f"policy_loss {name!r} has no ratio_level {ratio_level!r} form; use ratio_level: {spec.ratio_level}")
