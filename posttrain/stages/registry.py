"""Stage kinds: a config class plus a run function, registered by name.

Stage modules keep heavy imports (torch, transformers, trl, vllm) inside their run functions so that
`posttrain validate` and `posttrain stages` stay fast.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from posttrain.errors import ConfigError

if TYPE_CHECKING:
    from posttrain.common.config import StageConfig
    from posttrain.stages.context import StageContext

RunFn = Callable[["StageConfig", "StageContext"], dict[str, Any]]

# Modules that register built-in stage kinds when imported.
_BUILTIN_MODULES = (
    "posttrain.stages.init_model",
    "posttrain.stages.pretrain",
    "posttrain.stages.sft",
    "posttrain.stages.grpo",
    "posttrain.stages.ppo",
    "posttrain.stages.online_dpo",
    "posttrain.stages.reward_model",
    "posttrain.stages.prm",
    "posttrain.stages.dpo",
    "posttrain.stages.kto",
    "posttrain.stages.orpo",
    "posttrain.stages.eval",
)


@dataclass(frozen=True)
class StageKind:
    kind: str
    config_cls: type[StageConfig]
    run: RunFn
    summary: str


_KINDS: dict[str, StageKind] = {}
_loaded = False


def register_stage(kind: str, config_cls: type[StageConfig], summary: str) -> Callable[[RunFn], RunFn]:
    """Register `fn(config, ctx) -> summary_metrics` as the runner of stage kind `kind`."""

    def decorate(fn: RunFn) -> RunFn:
        _KINDS[kind] = StageKind(kind=kind, config_cls=config_cls, run=fn, summary=summary)
        return fn

    return decorate


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True


def stage_kinds() -> dict[str, StageKind]:
    _load_builtins()
    return dict(_KINDS)


def get_stage_kind(kind: Any, where: str = "") -> StageKind:
    """The registered kind, or a ConfigError listing the kinds and the nearest match."""
    kinds = stage_kinds()
    if isinstance(kind, str) and kind in kinds:
        return kinds[kind]
    prefix = f"{where}: " if where else ""
    if kind is None:
        raise ConfigError(f"{prefix}missing `kind` (expected one of: {', '.join(sorted(kinds))}).")
    close = difflib.get_close_matches(str(kind), list(kinds), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"{prefix}unknown stage kind '{kind}' (expected one of: {', '.join(sorted(kinds))}).{hint}")
