"""Turn pydantic validation errors into one readable paragraph with key paths, lines and hints."""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from posttrain.recipe.yaml_source import KeyPath, line_for


def _fields_at(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model that owns the last element of `loc`."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list field: same model as the list's items
            continue
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return []
        cls = _model_in(fields[part].annotation)
        if cls is None:
            return []
    hidden = getattr(cls, "unused_keys", frozenset())  # shared keys a kind does not read (online_dpo)
    return [name for name in getattr(cls, "model_fields", {}) if name not in hidden]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation: X, X | None, list[X], list[X] | None, dict[str, X]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(error: dict[str, Any], fields: list[str]) -> str:
    kind = error["type"]
    key = error["loc"][-1] if error["loc"] else ""
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown key.{hint} Valid keys: {', '.join(fields)}."
    if kind == "missing":
        return "required key is missing."
    got = error.get("input")
    if isinstance(got, dict):  # a check across keys (a model validator): its message names them
        return f"{error['msg'].removeprefix('Value error, ')}."
    shown = repr(got) if not isinstance(got, list) else type(got).__name__
    return f"{error['msg']} (got {shown})."


def format_validation_error(
    err: ValidationError,
    model_cls: type[BaseModel],
    source: str,
    prefix: KeyPath,
    lines: dict[KeyPath, int],
) -> str:
    """One line per problem: "recipe.yaml, line 7: stages.sft.lrr: unknown key. Did you mean 'lr'?"."""
    out = []
    for error in err.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        full = prefix + loc
        line = line_for(lines, full)
        if line == -1:  # set by a -s override (see resolve.OVERRIDE_LINE)
            where = f"{source} (command-line override)"
        else:
            where = f"{source}, line {line}" if line else source
        dotted = ".".join(str(p) for p in full)
        out.append(f"{where}: {dotted}: {_describe(error, _fields_at(model_cls, loc))}")
    return "\n".join(out)
