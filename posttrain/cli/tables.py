"""Terminal tables: the end-of-run summary and the stage-kind reference."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from posttrain.report.report import summary_rows


def print_summary(console: Console, result) -> None:
    table = Table(title=f"{result.recipe}: {result.run_dir}")
    for col in ("stage", "kind", "status", "seconds", "key metrics"):
        table.add_column(col)
    for row in summary_rows(result.stages):
        table.add_row(*row)
    console.print(table)
    console.print(f"report: {result.run_dir / 'report.md'}")


def print_stage_kinds(console: Console) -> None:
    from posttrain.stages.registry import stage_kinds

    table = Table(title="stage kinds (posttrain stages KIND for keys)")
    table.add_column("kind")
    table.add_column("what it does")
    for name, kind in sorted(stage_kinds().items()):
        table.add_row(name, kind.summary)
    console.print(table)


def _type_name(annotation: Any) -> str:
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("posttrain.", "")


def print_stage_keys(console: Console, kind_name: str, variant: str | None = None) -> None:
    """Every key of a stage kind with its type, default and help, nested blocks flattened with dots.

    The defaults are those a stage really gets: a kind with presets (grpo's variants, ppo) shows
    the preset's values (``variant`` picks one; its Literal field validates the name)."""
    from pydantic import BaseModel

    from posttrain.errors import ConfigError
    from posttrain.stages.registry import get_stage_kind

    kind = get_stage_kind(kind_name)
    top_defaults: dict[str, Any] = {}
    if hasattr(kind.config_cls, "default_values"):
        choice = {"variant": variant} if variant else {}
        if variant and "variant" not in kind.config_cls.model_fields:
            raise ConfigError(f"--variant: stage kind '{kind.kind}' has no variants.")
        try:
            top_defaults = kind.config_cls.default_values(choice)
        except KeyError:
            raise ConfigError(f"--variant: unknown variant '{variant}' for '{kind.kind}' "
                              f"(expected one of: {_type_name(kind.config_cls.model_fields['variant'].annotation)}).") from None
        if variant:
            top_defaults["variant"] = variant
    elif variant:
        raise ConfigError(f"--variant: stage kind '{kind.kind}' has no variants.")
    title = f" (variant {variant})" if variant else ""
    console.print(f"{kind.kind}{title}: {kind.summary}", highlight=False)

    def block(annotation: Any) -> type[BaseModel] | None:
        """The model of a nested block: ``Model`` or an optional ``Model | None``."""
        import typing

        for candidate in (annotation, *typing.get_args(annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                return candidate
        return None

    hidden = getattr(kind.config_cls, "unused_keys", frozenset())  # shared keys this kind does not read

    def add(model_cls: type[BaseModel], prefix: str) -> None:
        for name, field in model_cls.model_fields.items():
            if not prefix and name in hidden:
                continue
            nested = block(field.annotation)
            value = top_defaults[name] if not prefix and name in top_defaults else field.get_default(call_default_factory=True)
            default = "required" if field.is_required() else repr(value)
            # a required block shows its keys' defaults only; an optional one (None = off) its default too
            shown = "" if nested and (field.is_required() or value is not None) else f"  default {default}"
            # markup=False: help and defaults hold brackets ("posttrain[tensorboard]", [[lo, hi]])
            console.print(f"  {prefix + name}  ({_type_name(field.annotation)}){shown}", highlight=False,
                          soft_wrap=True, markup=False)
            if field.description:
                console.print(f"      {field.description}", highlight=False, soft_wrap=True, markup=False)
            if nested:
                add(nested, prefix + name + ".")

    add(kind.config_cls, "")


def memory_lines(stages) -> list[str]:
    """`validate --memory`: the estimated peak memory of each RL stage's step, per training
    process (posttrain.rl.loop.footprint); other stages are not estimated."""
    from posttrain.errors import PosttrainError
    from posttrain.rl.loop.config import OnlineRLConfig
    from posttrain.rl.loop.footprint import plan_memory

    lines = []
    for stage in stages:
        if not isinstance(stage.config, OnlineRLConfig):
            continue
        try:
            estimate = plan_memory(stage.config)
        except (ValueError, OSError, PosttrainError) as err:  # a missing model, tokenizer or data file
            lines.append(f"# {stage.name} memory: not estimated: {err}")
            continue
        where = "CUDA memory allocated" if estimate.cuda else "resident set"
        caveat = ("; float32 sizes: a bf16/fp16 run holds less" if estimate.cuda and stage.config.precision != "fp32"
                  else "")
        lines.append(f"# {stage.name} memory (estimate per training process, {where}): {estimate.describe()}{caveat}")
    return lines or ["# memory: no RL stage (grpo, ppo) to estimate"]
