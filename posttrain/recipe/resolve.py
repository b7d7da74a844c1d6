"""Recipe resolution: YAML (or a dict) + overrides -> validated, reference-resolved stages.

The same function serves the CLI, `posttrain.run()` and the per-stage Python helpers, so every caller
gets the same validation. Steps: apply `-s key=value` overrides, validate the header, merge
`defaults` into each stage, validate each stage with its kind's config class, resolve `${...}`
references (only to earlier stages), and fill each stage's input model.
"""
from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from posttrain.common.config import StageConfig
from posttrain.errors import ConfigError
from posttrain.recipe.errors import format_validation_error
from posttrain.recipe.schema import RecipeHeader
from posttrain.recipe.yaml_source import KeyPath, line_for, load_yaml_with_lines
from posttrain.stages.registry import StageKind, get_stage_kind, stage_kinds

_REF = re.compile(r"\$\{([^}]*)\}")
OVERRIDE_LINE = -1  # marks keys set by -s overrides in the line map


@dataclass
class ResolvedStage:
    name: str
    kind: StageKind
    config: StageConfig
    output_dir: Path
    depends_on: list[str] = field(default_factory=list)


@dataclass
class ResolvedRecipe:
    name: str
    run_dir: Path
    model: str | None
    stages: list[ResolvedStage]
    source: str
    plugins: list[str] = field(default_factory=list)  # imported modules / absolute .py paths

    def stage(self, name: str) -> ResolvedStage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"{self.source}: no stage named '{name}' (stages: {', '.join(s.name for s in self.stages)}).")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "run_dir": str(self.run_dir),
            **({"plugins": self.plugins} if self.plugins else {}),
            "stages": {s.name: s.config.model_dump(mode="json") for s in self.stages},
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def stage_output_dir(run_dir: Path, stage_name: str) -> Path:
    """Where a completed stage's HF-format model lives: `${stages.NAME.output}`."""
    return run_dir / stage_name / "model"


def _where(source: str, lines: dict[KeyPath, int], path: KeyPath) -> str:
    line = line_for(lines, path)
    if line == OVERRIDE_LINE:
        return f"{source} (command-line override)"
    return f"{source}, line {line}" if line else source


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str] | None,
                    lines: dict[KeyPath, int]) -> dict[str, Any]:
    """Set dotted keys: {"stages.sft.lr": 1e-5} or ["stages.sft.lr=1e-5"] (values parsed as YAML)."""
    data = copy.deepcopy(data)
    items: list[tuple[str, Any]] = []
    for item in (overrides.items() if isinstance(overrides, dict) else overrides or []):
        if isinstance(item, str):
            if "=" not in item:
                raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. stages.sft.lr=1e-5.")
            key, raw = item.split("=", 1)
            items.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
        else:
            items.append(item)
    defined = set(data.get("stages") or {}) if isinstance(data.get("stages"), dict) else set()
    created: dict[str, str] = {}  # stage name -> the first override that made it up
    for key, value in items:
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] == "stages" and parts[1] not in defined:
            created.setdefault(parts[1], key)
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{'.'.join(parts[:depth + 1])}' is not a mapping.")
            node = child
        node[parts[-1]] = value
        for stale in [k for k in lines if len(k) > len(parts) and k[:len(parts)] == tuple(parts)]:
            del lines[stale]  # the file's lines under a replaced value no longer describe it
        lines[tuple(parts)] = OVERRIDE_LINE
    for name, key in created.items():
        if "kind" not in data["stages"][name]:  # a new stage from overrides needs -s stages.NAME.kind=...
            close = difflib.get_close_matches(name, sorted(defined), n=1)
            raise ConfigError(f"override '{key}': the recipe has no stage {name!r} (its stages: "
                              f"{', '.join(sorted(defined)) or 'none'})"
                              + (f"; did you mean {close[0]!r}?" if close else
                                 f"; to add one, also set -s stages.{name}.kind=KIND."))
    return data


def _substitute(value: Any, path: KeyPath, env: dict[str, str], refs: set[str],
                where: Any) -> Any:
    """Replace `${...}` in every string of `value`; record `stages.X` names in `refs`."""
    if isinstance(value, dict):
        return {k: _substitute(v, path + (k,), env, refs, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, path + (i,), env, refs, where) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def repl(match: re.Match[str]) -> str:
        key = match.group(1).strip()
        if key not in env:
            stage_ref = re.fullmatch(r"stages\.([^.]+)\.(output|dir)", key)
            if stage_ref:
                raise ConfigError(
                    f"{where(path)}: {'.'.join(map(str, path))}: reference '${{{key}}}' names stage "
                    f"'{stage_ref.group(1)}', which is not an earlier stage (earlier: "
                    f"{', '.join(sorted({k.split('.')[1] for k in env if k.startswith('stages.')})) or 'none'})."
                )
            known = ", ".join(f"${{{k}}}" for k in sorted(env))
            raise ConfigError(f"{where(path)}: {'.'.join(map(str, path))}: unknown reference '${{{key}}}' (known: {known}).")
        if key.startswith("stages."):
            refs.add(key.split(".")[1])
        return env[key]

    return _REF.sub(repl, value)


def _merge_defaults(raw: dict[str, Any], defaults: dict[str, Any], config_cls: type[StageConfig]) -> dict[str, Any]:
    merged = dict(raw)
    for key, value in defaults.items():
        if key in config_cls.model_fields and key not in merged:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_defaults(defaults: dict[str, Any], source: str, lines: dict[KeyPath, int]) -> None:
    known = set()
    for kind in stage_kinds().values():
        known |= set(kind.config_cls.model_fields)
    for key in defaults:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{_where(source, lines, ('defaults', key))}: defaults.{key}: no stage kind has this key.{hint}")


def _rebase(value: Any, base_dir: Path) -> Any:
    """A literal relative path is read from the recipe's folder; references are left alone."""
    if isinstance(value, str) and value and "${" not in value and not Path(value).is_absolute():
        return str(base_dir / value)
    return value


def _resolve_paths(config: StageConfig, base_dir: Path) -> None:
    from posttrain.data import DataSpec

    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, DataSpec):
            setattr(config, name, value.resolve(base_dir))
    config.rebase_paths(base_dir)


def resolve_recipe(data: dict[str, Any], *, source: str = "<recipe>", lines: dict[KeyPath, int] | None = None,
                   overrides: dict[str, Any] | list[str] | None = None, base_dir: str | Path | None = None) -> ResolvedRecipe:
    """Validate a recipe mapping and resolve it; raises ConfigError with every problem found.

    Input paths (a stage's `model`, data files) are relative to `base_dir` (the recipe file's
    folder; the working directory for recipes built in Python). `run_dir` is relative to the
    working directory and made absolute, so every `${stages.X.output}` is an absolute path.
    """
    base_dir = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    lines = dict(lines or {})
    header = _validated_header(data, source, lines, overrides)
    plugins = _import_plugins(header.plugins, base_dir, source, lines)

    env = {"name": header.name}
    run_dir = Path(_substitute(header.run_dir, ("run_dir",), env, set(), lambda p: _where(source, lines, p))).resolve()
    recipe_model = _rebase(header.model, base_dir)
    env["run_dir"] = str(run_dir)
    where = lambda p: _where(source, lines, p)
    stages: list[ResolvedStage] = []
    problems: list[str] = []
    for name, raw in header.stages.items():
        path: KeyPath = ("stages", name)
        if not isinstance(raw, dict):
            problems.append(f"{where(path)}: stages.{name}: expected a mapping with a `kind`.")
            continue
        try:
            kind = get_stage_kind(raw.get("kind"), where=f"{where(path + ('kind',))}: stages.{name}.kind")
            refs: set[str] = set()
            merged = _merge_defaults(raw, header.defaults, kind.config_cls)
            if "model" in merged:
                merged["model"] = _rebase(merged["model"], base_dir)
            config = kind.config_cls.model_validate(_substitute(merged, path, env, refs, where))
            _resolve_paths(config, base_dir)
        except (ValidationError, ConfigError) as err:
            problems.append(format_validation_error(err, kind.config_cls, source, path, lines)
                            if isinstance(err, ValidationError) else str(err))
            _register_paths(env, run_dir, name)  # later stages may name it: report only its own problem
            continue
        if config.model is None and not kind.config_cls.creates_model:
            previous = next((s for s in reversed(stages) if type(s.config).produces_model), None)
            if previous is not None:
                config.model = str(stage_output_dir(run_dir, previous.name))
                refs.add(previous.name)
            elif recipe_model:
                config.model = recipe_model
            else:
                problems.append(f"{where(path)}: stages.{name}.model: no input model (set the recipe's `model`, this stage's `model`, or start with an init_model stage).")
                continue
        stage = ResolvedStage(name=name, kind=kind, config=config,
                              output_dir=stage_output_dir(run_dir, name), depends_on=sorted(refs))
        stages.append(stage)
        _register_paths(env, run_dir, name)
    if problems:
        raise ConfigError("\n".join(problems))
    return ResolvedRecipe(name=header.name, run_dir=run_dir, model=recipe_model, stages=stages, source=source,
                          plugins=plugins)


def _validated_header(data: Any, source: str, lines: dict[KeyPath, int],
                      overrides: dict[str, Any] | list[str] | None) -> RecipeHeader:
    """The recipe's top level, overrides applied, validated (stages not yet)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping with name, stages (and optionally model, run_dir, defaults).")
    data = apply_overrides(data, overrides, lines)
    try:
        header = RecipeHeader.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, RecipeHeader, source, (), lines)) from None
    if not header.stages:
        raise ConfigError(f"{_where(source, lines, ('stages',))}: stages: the recipe has no stages.")
    _check_defaults(header.defaults, source, lines)
    return header


def _import_plugins(refs: list[str], base_dir: Path, source: str, lines: dict[KeyPath, int]) -> list[str]:
    """Import every `plugins:` entry (so the stages' names resolve); every failure is reported."""
    from posttrain.common.plugins import import_plugin

    imported, problems = [], []
    for i, ref in enumerate(refs):
        try:
            imported.append(import_plugin(ref, base_dir, f"plugins[{i}]", ConfigError))
        except ConfigError as err:
            problems.append(f"{_where(source, lines, ('plugins', i))}: {err}")
    if problems:
        raise ConfigError("\n".join(problems))
    return imported


def _register_paths(env: dict[str, str], run_dir: Path, name: str) -> None:
    """Make ``${stages.NAME.output}`` and ``${stages.NAME.dir}`` available to the stages after it."""
    env[f"stages.{name}.output"] = str(stage_output_dir(run_dir, name))
    env[f"stages.{name}.dir"] = str(run_dir / name)


def load_recipe(path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> ResolvedRecipe:
    """Read a YAML recipe file and resolve it (see `resolve_recipe`)."""
    data, lines = load_yaml_with_lines(path)
    return resolve_recipe(data, source=str(path), lines=lines, overrides=overrides, base_dir=Path(path).parent)
