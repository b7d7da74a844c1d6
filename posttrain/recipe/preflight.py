"""Checks that run before anything trains, for every stage: its data files exist and parse, the
model folders it reads exist and are models, its plugins load (an RL stage's reward functions and
verifiers) and find the columns they read in its data, its trackers are installed.

`posttrain validate` and the start of `posttrain run` call :func:`preflight`, so a recipe whose
last stage names a missing file, a broken JSONL line or an unknown verifier fails in seconds,
before its first stage trains (the runner used to find out on reaching that stage). Every problem
of every stage is reported at once. A recipe without problems may still get warnings, logged
(``posttrain.recipe.preflight``, on stderr) for settings that are valid but do nothing here: a
stage config lists them in ``config_warnings(key)`` (an RL stage: a noisy-verifier correction its
advantages cancel). Files under the run directory are outputs of earlier stages
and are not checked. Loads no model; plugin modules are imported (as running the stage would).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from posttrain.common.config import written_by_the_run
from posttrain.data import DataSpec
from posttrain.errors import ConfigError, PosttrainError
from posttrain.report.trackers import missing_trackers

logger = logging.getLogger(__name__)


def _check_jsonl(path: Path, key: str) -> str | None:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"{key}: {path}, line {number}: not UTF-8 ({err.reason} at byte {err.start} of the line)"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                return f"{key}: {path}, line {number}: not valid JSON ({err.msg}, column {err.colno}); expected one JSON object per line"
            if not isinstance(row, dict):
                return f"{key}: {path}, line {number}: a JSON {type(row).__name__}; expected an object per line"
    return None


def _check_file(value: str | None, key: str, run_dir: Path) -> str | None:
    if not value:
        return None
    path = Path(value)
    if written_by_the_run(path, run_dir):
        return None
    if not path.exists():
        return f"{key}: data file {path} does not exist"
    if path.suffix == ".jsonl" and path.is_file():
        return _check_jsonl(path, key)
    return None


def stage_problems(stage, run_dir: Path) -> Iterable[str]:
    """The problems of one resolved stage's data files (an empty iterable when none)."""
    config = stage.config
    data_problems = [problem for name in type(config).model_fields if isinstance(getattr(config, name), DataSpec)
                     for field in ("path", "eval_path")
                     if (problem := _check_file(getattr(getattr(config, name), field),
                                                f"stages.{stage.name}.{name}.{field}", run_dir))]
    columns = None
    formats = type(config).data_formats
    path = getattr(getattr(config, "data", None), "path", None)
    if not data_problems and formats and path and not written_by_the_run(path, run_dir):
        from posttrain.data import load_dataset_spec

        try:  # the format's columns, as the stage will read them
            columns = load_dataset_spec(config.data, formats)[0].column_names
        except PosttrainError as err:
            data_problems.append(f"stages.{stage.name}.data: {err}")
    yield from data_problems
    yield from config.preflight_problems(f"stages.{stage.name}", Path(run_dir), columns)
    for problem in missing_trackers(config.report_to):
        yield f"stages.{stage.name}.{problem}"


def stage_warnings(stage) -> list[str]:
    """The config warnings of one resolved stage (settings that are valid but do nothing)."""
    warnings = getattr(stage.config, "config_warnings", None)  # only some kinds have any
    return warnings(f"stages.{stage.name}") if warnings is not None else []


def preflight(recipe, stages: Iterable[str] | None = None) -> None:
    """Raise one ConfigError listing every problem in the data files of ``stages`` (default all);
    without problems, log each stage's config warnings."""
    wanted = set(stages) if stages is not None else None
    selected = [stage for stage in recipe.stages if wanted is None or stage.name in wanted]
    problems = [problem for stage in selected for problem in stage_problems(stage, recipe.run_dir)]
    if Path(recipe.run_dir).exists() and not Path(recipe.run_dir).is_dir():
        problems.insert(0, f"run_dir: {recipe.run_dir} is a file; expected a folder for the run's outputs "
                           "(or a path that does not exist yet)")
    if problems:
        raise ConfigError(f"{recipe.source}: {len(problems)} problem(s) found before anything ran:\n  "
                          + "\n  ".join(problems))
    for stage in selected:
        for warning in stage_warnings(stage):
            logger.warning("warning: %s", warning)
