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

Lookups of unknown names raise ``ValueError`` listing the known names; the recipe layer turns
that into a ``ConfigError`` naming the file and key (this package imports only torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Any]] = {}
POLICY_LOSSES: dict[str, Callable[..., Any]] = {}


def _register(table: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[[F], F]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")

    def decorator(fn: F) -> F:
        if name in table and table[name] is not fn:
            raise ValueError(
                f"{kind} {name!r} is already registered (by {table[name].__module__}."
                f"{table[name].__qualname__}); pick another name"
            )
        table[name] = fn
        return fn

    return decorator


def register_advantage_estimator(name: str) -> Callable[[F], F]:
    """Decorator: register ``fn`` in :data:`ADVANTAGE_ESTIMATORS` under ``name``.

    Registering a different function under a taken name raises ``ValueError`` (silently
    replacing a built-in would change every recipe that names it).
    """
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable[[F], F]:
    """Decorator: register ``fn`` in :data:`POLICY_LOSSES` under ``name``."""
    return _register(POLICY_LOSSES, "policy loss", name)


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
